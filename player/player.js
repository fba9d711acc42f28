// Parallax web player: hls.js playback shown on the inside of a three.js sphere (equirectangular
// 360° video), with a flat mode, a stats overlay and test hooks on window.parallaxPlayer.
//
// Query parameters:
//   url=<playlist>   playlist to play, relative to this page or absolute (default below)
//   mode=flat|360    starting view (default 360)
//   stats=0          start with the overlay hidden
//   debug=1          hls.js debug logging to the console

import {
  Euler,
  LinearFilter,
  MathUtils,
  Mesh,
  MeshBasicMaterial,
  PerspectiveCamera,
  Quaternion,
  Scene,
  SphereGeometry,
  SRGBColorSpace,
  Vector3,
  VideoTexture,
  WebGLRenderer,
} from './vendor/three.module.min.js';

const DEFAULT_PLAYLIST = '/live/demo/index.m3u8';
const FOV_DEFAULT = 75;
const FOV_MIN = 30;
const FOV_MAX = 100;
const PITCH_LIMIT = 85;
const SPHERE_RADIUS = 500;
const MAX_ERRORS_KEPT = 200;

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);

const stage = $('stage');
const video = $('video');
const canvas = $('sphere');
const overlay = $('overlay');
const message = $('message');
const buttons = {
  play: $('btn-play'),
  mode: $('btn-mode'),
  unmute: $('btn-unmute'),
  gyro: $('btn-gyro'),
  recenter: $('btn-recenter'),
  stats: $('btn-stats'),
};
const statEls = {
  state: $('stat-state'),
  latency: $('stat-latency'),
  bitrate: $('stat-bitrate'),
  bandwidth: $('stat-bandwidth'),
  buffer: $('stat-buffer'),
  dropped: $('stat-dropped'),
  errors: $('stat-errors'),
  url: $('stat-url'),
};

// ---------------------------------------------------------------------------------------------
// Test hooks and shared state

const player = {
  version: '0.1.0',
  video,
  hls: null,
  url: null,
  mode: '360',
  state: 'loading',
  fatalErrors: [],
  errors: [],
  recoveries: [],
  webgl: false,
  webglError: null,
  framesRendered: 0,
  lastRenderAt: 0,
  measuredBitrate: 0,
  gyro: false,
  stats: () => collectStats(),
  sampleCanvas: () => sampleCanvas(),
  setMode: (mode) => setMode(mode),
  toggleMode: () => setMode(player.mode === 'flat' ? '360' : 'flat'),
  view: null, // { yaw, pitch, fov } in degrees, set below
};
window.parallaxPlayer = player;

function showMessage(text) {
  message.textContent = text;
  message.hidden = !text;
}

function setState(state) {
  if (player.state === state) return;
  player.state = state;
  statEls.state.textContent = state;
  statEls.state.className = `state ${state}`;
}

function keep(list, entry) {
  list.push(entry);
  if (list.length > MAX_ERRORS_KEPT) list.splice(0, list.length - MAX_ERRORS_KEPT);
}

// ---------------------------------------------------------------------------------------------
// Playlist URL

function playlistUrl() {
  const raw = params.get('url') || DEFAULT_PLAYLIST;
  let resolved;
  try {
    resolved = new URL(raw, location.href);
  } catch {
    return null;
  }
  if (resolved.protocol !== 'http:' && resolved.protocol !== 'https:') return null;
  return resolved.href;
}

// ---------------------------------------------------------------------------------------------
// Playback (hls.js, or the browser's own HLS where Media Source Extensions are missing)

// Beyond hls.js's own choice (5xx and timeouts), also retry what a live stream behind a cache
// produces while it fails over or (re)starts: connection failures (status 0), 404 for a segment or
// playlist not there yet, 408, 425 and 429. Not 401/403/410 and other client errors.
const RETRY_STATUS = new Set([0, 404, 408, 425, 429]);
function shouldRetry(config, retryCount, _isTimeout, response, retry) {
  if (retry) return true;
  return !!config && retryCount < config.maxNumRetry && !!response && RETRY_STATUS.has(response.code);
}

// Retries with exponential backoff for every load: a proxy failing over between origins, or a
// stream that is (re)starting, must look like a slow response, not a dead stream.
function retryPolicy({ ttfb, load, timeoutRetries, errorRetries }) {
  return {
    default: {
      maxTimeToFirstByteMs: ttfb,
      maxLoadTimeMs: load,
      timeoutRetry: { maxNumRetry: timeoutRetries, retryDelayMs: 0, maxRetryDelayMs: 0 },
      errorRetry: {
        maxNumRetry: errorRetries,
        retryDelayMs: 500,
        maxRetryDelayMs: 4000,
        backoff: 'exponential',
        shouldRetry,
      },
    },
  };
}

const HLS_CONFIG = {
  debug: params.get('debug') === '1',
  enableWorker: true,
  lowLatencyMode: false,
  // Live sync: play 3 target durations behind the live edge, jump forward past 10.
  liveSyncDurationCount: 3,
  liveMaxLatencyDurationCount: 10,
  liveDurationInfinity: false,
  maxBufferLength: 30,
  backBufferLength: 30,
  startFragPrefetch: true,
  manifestLoadPolicy: retryPolicy({ ttfb: 10000, load: 20000, timeoutRetries: 3, errorRetries: 6 }),
  playlistLoadPolicy: retryPolicy({ ttfb: 10000, load: 20000, timeoutRetries: 4, errorRetries: 8 }),
  fragLoadPolicy: retryPolicy({ ttfb: 10000, load: 60000, timeoutRetries: 4, errorRetries: 8 }),
};

const recovery = {
  lastMediaRecover: 0,
  networkAttempts: 0,
  timer: 0,
};

function startPlayback() {
  const url = playlistUrl();
  player.url = url;
  if (!url) {
    setState('error');
    showMessage('Invalid playlist URL: pass ?url=<playlist.m3u8>');
    return;
  }
  statEls.url.textContent = url;
  statEls.url.title = url;

  const Hls = window.Hls;
  if (Hls && Hls.isSupported()) {
    createHls(url);
  } else if (video.canPlayType('application/vnd.apple.mpegurl')) {
    // Safari without MSE (older iOS): native HLS, same overlay minus hls.js figures.
    video.src = url;
    tryPlay();
  } else {
    setState('error');
    showMessage('This browser cannot play HLS (no Media Source Extensions).');
  }
}

function createHls(url) {
  const Hls = window.Hls;
  const hls = new Hls(HLS_CONFIG);
  player.hls = hls;

  hls.on(Hls.Events.MANIFEST_PARSED, () => {
    recovery.networkAttempts = 0;
    tryPlay();
  });
  hls.on(Hls.Events.FRAG_LOADED, (_event, data) => {
    recovery.networkAttempts = 0;
    const frag = data.frag;
    const bytes = frag && frag.stats ? frag.stats.total || frag.stats.loaded : 0;
    if (frag && frag.duration > 0 && bytes > 0) {
      const bps = (bytes * 8) / frag.duration;
      player.measuredBitrate = player.measuredBitrate
        ? 0.7 * player.measuredBitrate + 0.3 * bps
        : bps;
    }
  });
  hls.on(Hls.Events.ERROR, (_event, data) => onHlsError(hls, data));

  hls.loadSource(url);
  hls.attachMedia(video);
}

function describeError(data) {
  return {
    at: Date.now(),
    mediaTime: video.currentTime,
    type: data.type,
    details: data.details,
    fatal: !!data.fatal,
    reason: data.reason || (data.error && data.error.message) || undefined,
    url: (data.frag && data.frag.url) || (data.context && data.context.url) || data.url || undefined,
    status: data.response && data.response.code ? data.response.code : undefined,
  };
}

// Recovery as the hls.js documentation recommends: fatal media errors → recoverMediaError()
// (swapping the audio codec if it happens again at once), fatal network errors → startLoad()
// after a backoff (or a fresh loadSource() if the manifest itself never loaded), anything else →
// a new hls.js instance.
function onHlsError(hls, data) {
  const Hls = window.Hls;
  const entry = describeError(data);
  if (!data.fatal) {
    keep(player.errors, entry);
    statEls.errors.textContent = String(player.errors.length + player.fatalErrors.length);
    return;
  }
  keep(player.fatalErrors, entry);
  statEls.errors.textContent = String(player.errors.length + player.fatalErrors.length);
  console.error('hls.js fatal error', entry.type, entry.details, entry.reason || '');
  if (hls !== player.hls) return;
  setState('recovering');
  clearTimeout(recovery.timer);

  let action;
  if (data.type === Hls.ErrorTypes.MEDIA_ERROR) {
    const now = performance.now();
    if (now - recovery.lastMediaRecover < 3000) {
      action = 'swapAudioCodec+recoverMediaError';
      hls.swapAudioCodec();
    } else {
      action = 'recoverMediaError';
    }
    recovery.lastMediaRecover = now;
    hls.recoverMediaError();
  } else if (data.type === Hls.ErrorTypes.NETWORK_ERROR) {
    const attempt = recovery.networkAttempts++;
    const delay = Math.min(1000 * 2 ** attempt, 8000);
    const manifest = [
      Hls.ErrorDetails.MANIFEST_LOAD_ERROR,
      Hls.ErrorDetails.MANIFEST_LOAD_TIMEOUT,
      Hls.ErrorDetails.MANIFEST_PARSING_ERROR,
    ].includes(data.details);
    action = `${manifest ? 'loadSource' : 'startLoad'} in ${delay} ms`;
    showMessage(`Network problem (${data.details}), retrying…`);
    recovery.timer = setTimeout(() => {
      if (hls !== player.hls) return;
      if (manifest) hls.loadSource(player.url);
      else hls.startLoad();
    }, delay);
  } else {
    action = 'recreate';
    recovery.timer = setTimeout(() => {
      if (hls !== player.hls) return;
      hls.destroy();
      player.hls = null;
      createHls(player.url);
    }, 2000);
  }
  entry.recovery = action;
  keep(player.recoveries, { at: entry.at, details: entry.details, action });
}

function tryPlay() {
  const attempt = video.play();
  if (attempt && attempt.catch) {
    attempt.then(
      () => {
        buttons.play.hidden = true;
      },
      (err) => {
        // Autoplay refused (even muted): wait for a tap.
        buttons.play.hidden = false;
        if (err && err.name !== 'AbortError') showMessage('Tap Play to start');
      },
    );
  }
}

video.addEventListener('playing', () => {
  setState('playing');
  showMessage('');
});
video.addEventListener('waiting', () => setState('buffering'));
video.addEventListener('pause', () => {
  if (!video.ended) setState('paused');
});
video.addEventListener('ended', () => setState('ended'));
video.addEventListener('error', () => {
  const err = video.error;
  keep(player.errors, {
    at: Date.now(),
    mediaTime: video.currentTime,
    type: 'videoElement',
    details: err ? `MediaError ${err.code}` : 'MediaError',
    fatal: false,
    reason: err && err.message ? err.message : undefined,
  });
});
video.addEventListener('volumechange', updateMuteButton);

// ---------------------------------------------------------------------------------------------
// 360° view (three.js)

const view = {
  yaw: 0, // degrees, positive turns right; 0 looks at the centre of the equirectangular frame
  pitch: 0, // degrees, positive looks up
  fov: FOV_DEFAULT,
  dirty: true,
  lastVideoTime: -1,
  yawOffset: 0, // radians, gyro mode: drag turns the device heading by this much
  deviceQuat: null, // latest device orientation (gyro mode), camera frame
};

player.view = view;

let renderer = null;
let scene = null;
let camera = null;
let texture = null;

function initSphere() {
  try {
    renderer = new WebGLRenderer({ canvas, antialias: false, alpha: false });
  } catch (err) {
    player.webglError = String((err && err.message) || err);
    return false;
  }
  renderer.setPixelRatio(Math.min(window.devicePixelRatio || 1, 2));
  renderer.setClearColor(0x000000, 1);

  scene = new Scene();
  camera = new PerspectiveCamera(view.fov, 16 / 9, 1, 1100);

  texture = new VideoTexture(video);
  texture.colorSpace = SRGBColorSpace;
  texture.minFilter = LinearFilter;
  texture.magFilter = LinearFilter;
  texture.generateMipmaps = false;

  // Inside-out sphere: mirror X so the texture faces inwards and reads left to right, then turn
  // it so the frame's centre (u = 0.5) lies straight ahead (-Z).
  const geometry = new SphereGeometry(SPHERE_RADIUS, 64, 32);
  geometry.scale(-1, 1, 1);
  const sphere = new Mesh(geometry, new MeshBasicMaterial({ map: texture }));
  sphere.rotation.y = -Math.PI / 2;
  scene.add(sphere);

  canvas.addEventListener('webglcontextlost', (event) => {
    event.preventDefault();
    keep(player.errors, { at: Date.now(), type: 'webgl', details: 'contextlost', fatal: false });
  });
  canvas.addEventListener('webglcontextrestored', () => {
    view.dirty = true;
  });

  player.webgl = true;
  player.renderer = renderer;
  player.scene = scene;
  player.camera = camera;
  return true;
}

function resize() {
  if (!renderer) return;
  const width = Math.max(1, stage.clientWidth);
  const height = Math.max(1, stage.clientHeight);
  renderer.setSize(width, height, false);
  camera.aspect = width / height;
  camera.updateProjectionMatrix();
  view.dirty = true;
}

const forward = new Vector3();
const yawQuat = new Quaternion();
const Y_AXIS = new Vector3(0, 1, 0);
const Z_AXIS = new Vector3(0, 0, 1);

function updateCamera() {
  if (camera.fov !== view.fov) {
    camera.fov = view.fov;
    camera.updateProjectionMatrix();
  }
  if (player.gyro && view.deviceQuat) {
    yawQuat.setFromAxisAngle(Y_AXIS, view.yawOffset);
    camera.quaternion.copy(yawQuat).multiply(view.deviceQuat);
    return;
  }
  const yaw = MathUtils.degToRad(view.yaw);
  const pitch = MathUtils.degToRad(view.pitch);
  forward.set(
    Math.sin(yaw) * Math.cos(pitch),
    Math.sin(pitch),
    -Math.cos(yaw) * Math.cos(pitch),
  );
  camera.position.set(0, 0, 0);
  camera.lookAt(forward);
}

function renderNow() {
  updateCamera();
  renderer.render(scene, camera);
  player.framesRendered++;
  player.lastRenderAt = performance.now();
}

function frame() {
  requestAnimationFrame(frame);
  if (!renderer || player.mode !== '360') return;
  // Draw when the view moved or the video shows a new frame; a paused stream costs nothing.
  const t = video.currentTime;
  if (view.dirty || t !== view.lastVideoTime) {
    view.dirty = false;
    view.lastVideoTime = t;
    renderNow();
  }
}

// Renders one frame and reads it back in the same task (no preserveDrawingBuffer needed):
// distinct colours and luminance spread of a downscaled copy. Black or one colour = blank.
function sampleCanvas() {
  if (!renderer) return { webgl: false, distinctColors: 0, stddev: 0, mean: 0 };
  renderNow();
  const w = 192;
  const h = Math.max(1, Math.round((w * canvas.height) / Math.max(1, canvas.width)));
  const copy = document.createElement('canvas');
  copy.width = w;
  copy.height = h;
  const ctx = copy.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(canvas, 0, 0, w, h);
  const data = ctx.getImageData(0, 0, w, h).data;
  const colors = new Set();
  let sum = 0;
  let sumSq = 0;
  const n = w * h;
  for (let i = 0; i < data.length; i += 4) {
    colors.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
    const y = 0.2126 * data[i] + 0.7152 * data[i + 1] + 0.0722 * data[i + 2];
    sum += y;
    sumSq += y * y;
  }
  const mean = sum / n;
  return {
    webgl: true,
    width: w,
    height: h,
    canvasWidth: canvas.width,
    canvasHeight: canvas.height,
    distinctColors: colors.size,
    mean: Math.round(mean * 10) / 10,
    stddev: Math.round(Math.sqrt(Math.max(0, sumSq / n - mean * mean)) * 10) / 10,
  };
}

// ----- look-around: pointer drag (mouse, pen, touch), pinch and wheel zoom, keys

const pointers = new Map();
let drag = null;
let pinch = null;

function zoomTo(fov) {
  view.fov = MathUtils.clamp(fov, FOV_MIN, FOV_MAX);
  view.dirty = true;
}

function pinchDistance() {
  const [a, b] = [...pointers.values()];
  return Math.hypot(a.x - b.x, a.y - b.y) || 1;
}

canvas.addEventListener('pointerdown', (event) => {
  canvas.setPointerCapture(event.pointerId);
  pointers.set(event.pointerId, { x: event.clientX, y: event.clientY });
  if (pointers.size === 1) {
    drag = { x: event.clientX, y: event.clientY, yaw: view.yaw, pitch: view.pitch, offset: view.yawOffset };
    canvas.classList.add('dragging');
  } else if (pointers.size === 2) {
    drag = null;
    pinch = { distance: pinchDistance(), fov: view.fov };
  }
});

canvas.addEventListener('pointermove', (event) => {
  if (!pointers.has(event.pointerId)) return;
  pointers.set(event.pointerId, { x: event.clientX, y: event.clientY });
  if (pinch && pointers.size >= 2) {
    zoomTo((pinch.fov * pinch.distance) / pinchDistance());
    return;
  }
  if (!drag) return;
  // Grab the scene: it follows the pointer, at a rate matching the current field of view.
  const degreesPerPixel = view.fov / Math.max(1, canvas.clientHeight);
  const dx = event.clientX - drag.x;
  const dy = event.clientY - drag.y;
  if (player.gyro) {
    view.yawOffset = drag.offset + MathUtils.degToRad(dx * degreesPerPixel);
  } else {
    view.yaw = drag.yaw - dx * degreesPerPixel;
    view.pitch = MathUtils.clamp(drag.pitch + dy * degreesPerPixel, -PITCH_LIMIT, PITCH_LIMIT);
  }
  view.dirty = true;
});

function endPointer(event) {
  pointers.delete(event.pointerId);
  if (pointers.size < 2) pinch = null;
  if (pointers.size === 1) {
    const [p] = pointers.values();
    drag = { x: p.x, y: p.y, yaw: view.yaw, pitch: view.pitch, offset: view.yawOffset };
  } else if (pointers.size === 0) {
    drag = null;
    canvas.classList.remove('dragging');
  }
}
canvas.addEventListener('pointerup', endPointer);
canvas.addEventListener('pointercancel', endPointer);

canvas.addEventListener(
  'wheel',
  (event) => {
    event.preventDefault();
    zoomTo(view.fov + event.deltaY * 0.05);
  },
  { passive: false },
);

document.addEventListener('keydown', (event) => {
  if (event.target instanceof HTMLButtonElement && (event.key === ' ' || event.key === 'Enter')) return;
  const step = 5;
  switch (event.key) {
    case 'ArrowLeft': view.yaw -= step; break;
    case 'ArrowRight': view.yaw += step; break;
    case 'ArrowUp': view.pitch = Math.min(PITCH_LIMIT, view.pitch + step); break;
    case 'ArrowDown': view.pitch = Math.max(-PITCH_LIMIT, view.pitch - step); break;
    case '+': case '=': zoomTo(view.fov - step); break;
    case '-': zoomTo(view.fov + step); break;
    case 'f': player.toggleMode(); return;
    case 'm': toggleMute(); return;
    case 's': toggleStats(); return;
    case 'r': recenter(); return;
    default: return;
  }
  view.dirty = true;
});

// ----- gyro (deviceorientation)

const deviceEuler = new Euler();
const deviceQuat = new Quaternion();
// The camera looks out of the back of the device, not out of its top.
const backOfDevice = new Quaternion(-Math.SQRT1_2, 0, 0, Math.SQRT1_2);
const screenQuat = new Quaternion();

function screenAngle() {
  if (screen.orientation && typeof screen.orientation.angle === 'number') return screen.orientation.angle;
  return typeof window.orientation === 'number' ? window.orientation : 0;
}

function onDeviceOrientation(event) {
  if (event.alpha === null || event.beta === null || event.gamma === null) return;
  // alpha about the device's Z (up out of the screen), beta about X, gamma about Y, intrinsic
  // Z-X'-Y''; in three.js axes (Y up) that is the Euler order YXZ with gamma negated.
  deviceEuler.set(
    MathUtils.degToRad(event.beta),
    MathUtils.degToRad(event.alpha),
    -MathUtils.degToRad(event.gamma),
    'YXZ',
  );
  deviceQuat.setFromEuler(deviceEuler).multiply(backOfDevice);
  screenQuat.setFromAxisAngle(Z_AXIS, -MathUtils.degToRad(screenAngle()));
  deviceQuat.multiply(screenQuat);
  if (!view.deviceQuat) {
    // First reading: keep looking where the user was looking.
    const heading = new Euler().setFromQuaternion(deviceQuat, 'YXZ').y;
    view.yawOffset = -MathUtils.degToRad(view.yaw) - heading;
    view.deviceQuat = new Quaternion();
  }
  view.deviceQuat.copy(deviceQuat);
  view.dirty = true;
}

async function toggleGyro() {
  if (player.gyro) {
    player.gyro = false;
    window.removeEventListener('deviceorientation', onDeviceOrientation);
    view.deviceQuat = null;
    buttons.gyro.setAttribute('aria-pressed', 'false');
    view.dirty = true;
    return;
  }
  // iOS 13+: permission must be asked from within the tap.
  const DOE = window.DeviceOrientationEvent;
  if (DOE && typeof DOE.requestPermission === 'function') {
    try {
      const answer = await DOE.requestPermission();
      if (answer !== 'granted') {
        showMessage('Motion access was not granted');
        return;
      }
    } catch (err) {
      showMessage(`Motion access failed: ${err && err.message ? err.message : err}`);
      return;
    }
  }
  player.gyro = true;
  view.deviceQuat = null;
  buttons.gyro.setAttribute('aria-pressed', 'true');
  window.addEventListener('deviceorientation', onDeviceOrientation);
  setTimeout(() => {
    if (player.gyro && !view.deviceQuat) {
      showMessage('No motion sensor readings on this device');
      toggleGyro();
      setTimeout(() => showMessage(''), 2500);
    }
  }, 2000);
}

function recenter() {
  view.yaw = 0;
  view.pitch = 0;
  view.fov = FOV_DEFAULT;
  if (player.gyro && view.deviceQuat) {
    view.yawOffset = -new Euler().setFromQuaternion(view.deviceQuat, 'YXZ').y;
  }
  view.dirty = true;
}

// ---------------------------------------------------------------------------------------------
// Controls

function setMode(mode) {
  const next = mode === 'flat' || !player.webgl ? 'flat' : '360';
  player.mode = next;
  stage.classList.toggle('mode-flat', next === 'flat');
  stage.classList.toggle('mode-360', next === '360');
  buttons.mode.textContent = next === 'flat' ? '360°' : 'Flat';
  buttons.mode.setAttribute('aria-pressed', String(next === 'flat'));
  buttons.recenter.hidden = next === 'flat';
  // Gyro only where there is likely a motion sensor: touch devices (phones, tablets).
  buttons.gyro.hidden =
    next === 'flat' || !('DeviceOrientationEvent' in window) || !(navigator.maxTouchPoints > 0);
  if (next === '360') {
    resize();
    view.dirty = true;
  }
  return next;
}

function updateMuteButton() {
  buttons.unmute.textContent = video.muted ? 'Unmute' : 'Mute';
}

function toggleMute() {
  video.muted = !video.muted;
  if (!video.muted && video.volume === 0) video.volume = 1;
  if (video.paused) tryPlay();
}

function toggleStats() {
  overlay.hidden = !overlay.hidden;
  buttons.stats.setAttribute('aria-pressed', String(!overlay.hidden));
}

buttons.play.addEventListener('click', () => {
  showMessage('');
  tryPlay();
});
buttons.mode.addEventListener('click', () => player.toggleMode());
buttons.unmute.addEventListener('click', toggleMute);
buttons.gyro.addEventListener('click', toggleGyro);
buttons.recenter.addEventListener('click', recenter);
buttons.stats.addEventListener('click', toggleStats);

// ---------------------------------------------------------------------------------------------
// Stats overlay

function bufferAhead() {
  const t = video.currentTime;
  const ranges = video.buffered;
  for (let i = 0; i < ranges.length; i++) {
    if (ranges.start(i) <= t + 0.1 && t <= ranges.end(i)) return ranges.end(i) - t;
  }
  return 0;
}

function collectStats() {
  const hls = player.hls;
  const stats = {
    state: player.state,
    mode: player.mode,
    currentTime: video.currentTime,
    paused: video.paused,
    readyState: video.readyState,
    videoWidth: video.videoWidth,
    videoHeight: video.videoHeight,
    buffer: bufferAhead(),
    latency: null,
    targetLatency: null,
    wallClockLatency: null,
    bitrate: null,
    measuredBitrate: player.measuredBitrate || null,
    bandwidthEstimate: null,
    level: null,
    droppedFrames: null,
    totalFrames: null,
    framesRendered: player.framesRendered,
    fatalErrors: player.fatalErrors.length,
    errors: player.errors.length,
    hlsVersion: window.Hls ? window.Hls.version : null,
  };
  if (hls) {
    if (hls.liveSyncPosition !== null && hls.liveSyncPosition !== undefined && video.readyState > 0) {
      stats.latency = hls.latency;
      stats.targetLatency = hls.targetLatency;
    }
    const playing = hls.playingDate;
    if (playing instanceof Date && !Number.isNaN(playing.getTime())) {
      stats.wallClockLatency = (Date.now() - playing.getTime()) / 1000;
    }
    const level = hls.levels && hls.currentLevel >= 0 ? hls.levels[hls.currentLevel] : null;
    if (level) {
      stats.level = hls.currentLevel;
      stats.bitrate = level.bitrate || null;
    }
    stats.bandwidthEstimate = Number.isFinite(hls.bandwidthEstimate) ? hls.bandwidthEstimate : null;
  } else if (video.seekable.length > 0) {
    // Native HLS: distance to the end of the seekable range.
    stats.latency = video.seekable.end(video.seekable.length - 1) - video.currentTime;
  }
  if (typeof video.getVideoPlaybackQuality === 'function') {
    const q = video.getVideoPlaybackQuality();
    stats.droppedFrames = q.droppedVideoFrames;
    stats.totalFrames = q.totalVideoFrames;
  }
  return stats;
}

function fmtSeconds(s) {
  return s === null || !Number.isFinite(s) ? '–' : `${s.toFixed(1)} s`;
}

function fmtBits(bps) {
  if (!bps || !Number.isFinite(bps)) return '–';
  if (bps >= 1e6) return `${(bps / 1e6).toFixed(2)} Mbit/s`;
  return `${Math.round(bps / 1e3)} kbit/s`;
}

function updateOverlay() {
  if (overlay.hidden) return;
  const s = collectStats();
  let latency = fmtSeconds(s.latency);
  if (s.targetLatency !== null && s.latency !== null) latency += ` (target ${s.targetLatency.toFixed(1)})`;
  if (s.wallClockLatency !== null) latency += `, clock ${s.wallClockLatency.toFixed(1)} s`;
  statEls.latency.textContent = latency;
  let bitrate = s.bitrate ? fmtBits(s.bitrate) : '–';
  if (s.measuredBitrate) bitrate += ` (segments ${fmtBits(s.measuredBitrate)})`;
  if (s.videoWidth) bitrate += ` ${s.videoWidth}×${s.videoHeight}`;
  statEls.bitrate.textContent = bitrate;
  statEls.bandwidth.textContent = fmtBits(s.bandwidthEstimate);
  statEls.buffer.textContent = fmtSeconds(s.buffer);
  statEls.dropped.textContent =
    s.droppedFrames === null ? '–' : `${s.droppedFrames} / ${s.totalFrames}`;
}

// ---------------------------------------------------------------------------------------------
// Start

if (params.get('stats') === '0') toggleStats();
updateMuteButton();
if (!initSphere()) {
  showMessage('WebGL is not available: showing the flat video');
  buttons.mode.disabled = true;
}
setMode(params.get('mode') === 'flat' ? 'flat' : '360');
if (typeof ResizeObserver === 'function') new ResizeObserver(resize).observe(stage);
else window.addEventListener('resize', resize);
resize();
requestAnimationFrame(frame);
setInterval(updateOverlay, 500);
startPlayback();
