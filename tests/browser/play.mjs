#!/usr/bin/env node
// Drives the Parallax web player in headless Chromium (Debian's /usr/bin/chromium, through
// playwright-core from player/node_modules: run `npm ci` in player/ first).
//
//   node tests/browser/play.mjs --url <player page URL> [--seconds N] [--screenshot out.png]
//        [--mark-after S] [--timeout S] [--min-advance S] [--flat] [--viewport WxH]
//
//   --url          the player page, e.g. http://127.0.0.1:8080/player/?url=/live/demo/index.m3u8
//   --mark-after   seconds the video must advance from its first playing position before the
//                  PLAYING line is printed (default 5)
//   --timeout      seconds allowed to reach that point (default 60)
//   --seconds      seconds to keep playing after the PLAYING line, sampled every second (default 10;
//                  RESULT.longestStall is the longest run of samples with no progress, seconds)
//   --min-advance  media seconds that must play in that time (default 60% of --seconds)
//   --screenshot   PNG of the page at the end (in 360 mode); with --flat also <name>.flat.png
//   --flat         click the Flat toggle: the <video> must show instead of the canvas, playback
//                  must go on; then click it back
//   --viewport     browser viewport (default 960x540)
//
// stdout: one `PLAYING {json}` line (a harness may kill the primary origin when it sees it), then
// one `RESULT {json}` line. Page console errors go to stderr.
// Exit: 0 ok, 1 the player failed a check, 2 the harness itself failed (no browser, bad usage).
// CHROMIUM overrides the browser binary (default /usr/bin/chromium).

import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const here = path.dirname(fileURLToPath(import.meta.url));
const playerDir = path.resolve(here, '../../player');

// Flags for headless Chromium without a GPU: WebGL then runs on SwiftShader through ANGLE, which
// Chromium only allows for WebGL when told it may (--enable-unsafe-swiftshader).
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--autoplay-policy=no-user-gesture-required',
  '--use-angle=swiftshader',
  '--enable-unsafe-swiftshader',
  '--disable-dev-shm-usage',
];

// Blank means one flat colour (nothing drawn, or black video). The built-in test clip's colour
// bars fill the default 75° view with a handful of flat colours, so a few distinct colours plus
// real variance is the bar, not photographic detail.
const CANVAS_MIN_COLORS = 4;
const CANVAS_MIN_STDDEV = 5;

function usage(msg) {
  process.stderr.write(
    `play.mjs: ${msg}\nusage: node tests/browser/play.mjs --url <player page URL> [--seconds N] ` +
      `[--screenshot out.png] [--mark-after S] [--timeout S] [--min-advance S] [--flat] [--viewport WxH]\n`,
  );
  process.exit(2);
}

function parseArgs(argv) {
  const opts = {
    url: null,
    seconds: 10,
    screenshot: null,
    markAfter: 5,
    timeout: 60,
    minAdvance: null,
    flat: false,
    viewport: { width: 960, height: 540 },
  };
  const number = (name, v) => {
    const n = Number(v);
    if (v === undefined || !Number.isFinite(n) || n < 0) usage(`${name} needs a number`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const [flag, inline] = a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    const value = () => (inline !== undefined ? inline : argv[++i]);
    switch (flag) {
      case '--url': opts.url = value(); break;
      case '--seconds': opts.seconds = number(flag, value()); break;
      case '--screenshot': opts.screenshot = value(); break;
      case '--mark-after': opts.markAfter = number(flag, value()); break;
      case '--timeout': opts.timeout = number(flag, value()); break;
      case '--min-advance': opts.minAdvance = number(flag, value()); break;
      case '--flat': opts.flat = true; break;
      case '--viewport': {
        const m = /^(\d+)x(\d+)$/.exec(value() || '');
        if (!m) usage('--viewport needs WxH');
        opts.viewport = { width: Number(m[1]), height: Number(m[2]) };
        break;
      }
      case '-h':
      case '--help':
        usage('help');
        break;
      default:
        usage(`unknown argument ${a}`);
    }
  }
  if (!opts.url) usage('--url is required');
  if (opts.minAdvance === null) opts.minAdvance = opts.seconds * 0.6;
  return opts;
}

const opts = parseArgs(process.argv.slice(2));

function emit(tag, obj) {
  const line = `${tag} ${JSON.stringify(obj)}\n`;
  return new Promise((resolve) => process.stdout.write(line, resolve));
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const round = (x, digits = 3) => (typeof x === 'number' && Number.isFinite(x) ? Number(x.toFixed(digits)) : x);

let chromium;
try {
  const require = createRequire(path.join(playerDir, 'package.json'));
  ({ chromium } = require('playwright-core'));
} catch (err) {
  process.stderr.write(
    `play.mjs: cannot load playwright-core from ${playerDir}/node_modules (run \`npm ci\` in player/): ${err.message}\n`,
  );
  process.exit(2);
}

const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const result = {
  ok: false,
  reason: null,
  url: opts.url,
  startTime: null,
  markTime: null,
  endTime: null,
  playedSeconds: 0,
  advancedAfterMark: 0,
  minAdvance: opts.minAdvance,
  stillAdvancing: false,
  longestStall: 0,
  samples: [],
  fatalErrors: [],
  nonFatalErrors: 0,
  nonFatalDetails: {},
  recoveries: [],
  canvasNonBlank: false,
  distinctColors: 0,
  canvasStddev: 0,
  screenshotDistinctColors: 0,
  framesRendered: 0,
  flatToggleOk: null,
  flatDetails: null,
  mode: null,
  latency: null,
  bitrate: null,
  measuredBitrate: null,
  bandwidthEstimate: null,
  droppedFrames: null,
  videoSize: null,
  hlsVersion: null,
  consoleErrors: [],
  pageErrors: [],
  elapsedMs: 0,
};
const began = Date.now();
let browser = null;
let finished = false;

async function finish(code) {
  if (finished) return;
  finished = true;
  result.elapsedMs = Date.now() - began;
  await emit('RESULT', result);
  if (browser) {
    await Promise.race([browser.close().catch(() => {}), sleep(5000)]);
  }
  process.exit(code);
}

// Never hang: reaching PLAYING, the play period, the checks, plus slack for launch and load.
const hardTimeoutMs = (opts.timeout + opts.seconds + 90) * 1000;
setTimeout(() => {
  result.reason = `hard timeout after ${Math.round(hardTimeoutMs / 1000)} s`;
  process.stderr.write(`play.mjs: ${result.reason}\n`);
  finish(browser ? 1 : 2);
}, hardTimeoutMs);

try {
  browser = await chromium.launch({ executablePath, headless: true, args: CHROMIUM_ARGS, timeout: 30000 });
} catch (err) {
  process.stderr.write(`play.mjs: cannot launch Chromium at ${executablePath}: ${err.message}\n`);
  result.reason = `browser launch failed: ${err.message.split('\n')[0]}`;
  await finish(2);
}

const context = await browser.newContext({ viewport: opts.viewport, deviceScaleFactor: 1 });
const page = await context.newPage();
page.on('console', (msg) => {
  if (msg.type() !== 'error') return;
  const text = msg.text();
  process.stderr.write(`[page console.error] ${text}\n`);
  if (result.consoleErrors.length < 50) result.consoleErrors.push(text.slice(0, 500));
});
page.on('pageerror', (err) => {
  process.stderr.write(`[page error] ${err.message}\n`);
  if (result.pageErrors.length < 50) result.pageErrors.push(String(err.message).slice(0, 500));
});

async function fail(reason) {
  result.reason = reason;
  await collect().catch(() => {});
  await finish(1);
}

// Player state as the page sees it.
async function readPlayer() {
  return page.evaluate(() => {
    const p = window.parallaxPlayer;
    if (!p) return null;
    return {
      currentTime: p.video.currentTime,
      paused: p.video.paused,
      readyState: p.video.readyState,
      state: p.state,
      fatal: p.fatalErrors.length,
    };
  });
}

async function collect() {
  const snap = await page.evaluate(() => {
    const p = window.parallaxPlayer;
    if (!p) return null;
    return {
      stats: p.stats(),
      fatalErrors: p.fatalErrors,
      errors: p.errors.map((e) => e.details),
      recoveries: p.recoveries,
    };
  });
  if (!snap) return;
  const s = snap.stats;
  result.fatalErrors = snap.fatalErrors;
  result.nonFatalErrors = snap.errors.length;
  result.nonFatalDetails = {};
  for (const d of snap.errors) result.nonFatalDetails[d] = (result.nonFatalDetails[d] || 0) + 1;
  result.recoveries = snap.recoveries;
  result.mode = s.mode;
  result.latency = round(s.latency);
  result.bitrate = s.bitrate;
  result.measuredBitrate = s.measuredBitrate ? Math.round(s.measuredBitrate) : null;
  result.bandwidthEstimate = s.bandwidthEstimate ? Math.round(s.bandwidthEstimate) : null;
  result.droppedFrames = s.droppedFrames;
  result.framesRendered = s.framesRendered;
  result.videoSize = s.videoWidth ? `${s.videoWidth}x${s.videoHeight}` : null;
  result.hlsVersion = s.hlsVersion;
  result.endTime = round(s.currentTime);
}

// ----- load the page

try {
  const response = await page.goto(opts.url, { waitUntil: 'load', timeout: 30000 });
  if (!response || !response.ok()) {
    await fail(`player page answered ${response ? response.status() : 'nothing'}`);
  }
} catch (err) {
  await fail(`player page did not load: ${err.message.split('\n')[0]}`);
}
try {
  await page.waitForFunction(() => window.parallaxPlayer && window.parallaxPlayer.video, null, { timeout: 15000 });
} catch {
  await fail('window.parallaxPlayer never appeared (player script failed?)');
}

// ----- (1) until the video has advanced --mark-after seconds from its first playing position

{
  const deadline = Date.now() + opts.timeout * 1000;
  let state = null;
  for (;;) {
    state = await readPlayer();
    if (state && !state.paused && state.readyState >= 2 && state.currentTime > 0) {
      if (result.startTime === null) result.startTime = round(state.currentTime);
      if (state.currentTime - result.startTime >= opts.markAfter) break;
    }
    if (Date.now() > deadline) {
      await fail(
        result.startTime === null
          ? `playback did not start within ${opts.timeout} s (state ${state && state.state})`
          : `playback advanced only ${round(state.currentTime - result.startTime)} s within ${opts.timeout} s`,
      );
    }
    await sleep(250);
  }
  result.markTime = round(state.currentTime);
  await collect();
  await emit('PLAYING', {
    startTime: result.startTime,
    currentTime: result.markTime,
    elapsedMs: Date.now() - began,
    latency: result.latency,
    fatalErrors: result.fatalErrors.length,
  });
}

// ----- (2) keep playing --seconds, sampling every second

{
  const until = Date.now() + opts.seconds * 1000;
  while (Date.now() < until) {
    await sleep(Math.min(1000, Math.max(0, until - Date.now())));
    const state = await readPlayer();
    if (state) result.samples.push(round(state.currentTime, 2));
  }
  const last = result.samples.length ? result.samples[result.samples.length - 1] : result.markTime;
  result.advancedAfterMark = round(last - result.markTime);
  // Longest run of one-second samples in which the video did not move (a stall, in seconds).
  let run = 0;
  let prev = result.markTime;
  for (const t of result.samples) {
    run = t - prev < 0.1 ? run + 1 : 0;
    result.longestStall = Math.max(result.longestStall, run);
    prev = t;
  }
  // Still moving at the end: the last three seconds advanced.
  const tail = result.samples.slice(-4);
  result.stillAdvancing = tail.length >= 2 ? tail[tail.length - 1] - tail[0] > 0.5 : last > result.markTime;
}

// ----- (3) flat toggle (optional): the <video> replaces the canvas, playback goes on, and back

if (opts.flat) {
  const probe = () =>
    page.evaluate(() => {
      const p = window.parallaxPlayer;
      const video = p.video;
      const canvas = document.getElementById('sphere');
      const shown = (el) => {
        const cs = getComputedStyle(el);
        const r = el.getBoundingClientRect();
        return cs.display !== 'none' && cs.visibility !== 'hidden' && Number(cs.opacity) > 0 && r.width > 0 && r.height > 0;
      };
      const hit = document.elementFromPoint(innerWidth / 2, innerHeight / 2);
      return {
        mode: p.mode,
        videoShown: shown(video),
        canvasShown: shown(canvas),
        centre: hit ? hit.id || hit.tagName.toLowerCase() : null,
        currentTime: video.currentTime,
      };
    });
  const details = {};
  try {
    await page.click('#btn-mode');
    await sleep(300);
    details.flat = await probe();
    await sleep(1500);
    const later = await probe();
    details.flat.advanced = round(later.currentTime - details.flat.currentTime);
    if (opts.screenshot) {
      await page.screenshot({ path: opts.screenshot.replace(/(\.png)?$/i, '.flat.png') });
    }
    await page.click('#btn-mode');
    await sleep(300);
    details.back = await probe();
  } catch (err) {
    details.error = err.message.split('\n')[0];
  }
  const f = details.flat;
  const b = details.back;
  result.flatToggleOk = !!(
    f && b &&
    f.mode === 'flat' && f.videoShown && !f.canvasShown && f.centre === 'video' && f.advanced > 0.5 &&
    b.mode === '360' && b.canvasShown && b.centre === 'sphere'
  );
  result.flatDetails = details;
}

// ----- (4) the 360 canvas renders: WebGL read-back, and the composited page in a screenshot

try {
  await page.waitForTimeout(500);
  const sample = await page.evaluate(() => window.parallaxPlayer.sampleCanvas());
  result.distinctColors = sample.distinctColors;
  result.canvasStddev = sample.stddev;
  const png = await page.screenshot(opts.screenshot ? { path: opts.screenshot } : {});
  // Decode the screenshot in the page and count colours inside the canvas, leaving out the
  // overlay and controls drawn over it.
  result.screenshotDistinctColors = await page.evaluate(async (b64) => {
    const img = new Image();
    img.src = `data:image/png;base64,${b64}`;
    await img.decode();
    const c = document.createElement('canvas');
    c.width = img.naturalWidth;
    c.height = img.naturalHeight;
    const ctx = c.getContext('2d', { willReadFrequently: true });
    ctx.drawImage(img, 0, 0);
    const rect = (el) => (el && !el.hidden ? el.getBoundingClientRect() : null);
    const canvasRect = rect(document.getElementById('sphere'));
    if (!canvasRect || canvasRect.width === 0) return 0;
    const covers = [document.getElementById('overlay'), document.getElementById('message'), ...document.querySelectorAll('#controls button')]
      .map(rect)
      .filter((r) => r && r.width > 0);
    const x0 = Math.max(0, Math.floor(canvasRect.left));
    const y0 = Math.max(0, Math.floor(canvasRect.top));
    const x1 = Math.min(c.width, Math.ceil(canvasRect.right));
    const y1 = Math.min(c.height, Math.ceil(canvasRect.bottom));
    const data = ctx.getImageData(0, 0, c.width, c.height).data;
    const colors = new Set();
    for (let y = y0; y < y1; y += 2) {
      for (let x = x0; x < x1; x += 2) {
        if (covers.some((r) => x >= r.left - 2 && x <= r.right + 2 && y >= r.top - 2 && y <= r.bottom + 2)) continue;
        const i = (y * c.width + x) * 4;
        colors.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
      }
    }
    return colors.size;
  }, png.toString('base64'));
  result.canvasNonBlank =
    sample.webgl &&
    sample.distinctColors >= CANVAS_MIN_COLORS &&
    sample.stddev >= CANVAS_MIN_STDDEV &&
    result.screenshotDistinctColors >= CANVAS_MIN_COLORS;
} catch (err) {
  result.reason = `canvas check failed: ${err.message.split('\n')[0]}`;
}

await collect();
result.playedSeconds = round(result.endTime - result.startTime);

const problems = [];
if (result.fatalErrors.length > 0) problems.push(`${result.fatalErrors.length} fatal hls.js error(s)`);
if (result.advancedAfterMark < opts.minAdvance) {
  problems.push(`advanced ${result.advancedAfterMark} s after PLAYING, wanted ${opts.minAdvance}`);
}
if (!result.stillAdvancing) problems.push('playback was not advancing at the end');
if (!result.canvasNonBlank) problems.push(`360 canvas blank (${result.distinctColors} colours, screenshot ${result.screenshotDistinctColors})`);
if (opts.flat && !result.flatToggleOk) problems.push('flat toggle check failed');
if (result.pageErrors.length > 0) problems.push(`${result.pageErrors.length} uncaught page error(s)`);
result.ok = problems.length === 0 && !result.reason;
if (problems.length) result.reason = [result.reason, ...problems].filter(Boolean).join('; ');
await finish(result.ok ? 0 : 1);
