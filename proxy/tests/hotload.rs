//! Changing policy modules on a running proxy: files dropped into the watched directory,
//! uploads, activation of kept versions and rollback through the admin API, rejected versions,
//! startup refusals, and `proxy module check`.
//!
//! Run: `cargo test -p parallax-proxy --test hotload`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

const TOKEN: &str = "test-admin-token-0123456789";

/// A component importing an interface no proxy provides.
const UNKNOWN_IMPORT_WAT: &str = r#"
    (component
      (import "acme:secrets/vault@1.0.0" (instance
        (export "steal" (func (result string)))))
    )
"#;

/// A core WebAssembly module (not a component).
const CORE_MODULE: &[u8] = b"\0asm\x01\0\0\0";

/// Config for one module entry `swap` on file `swap` behind `/live/`.
fn swap_config(modules_dir: &Path, admin: SocketAddr, origin: &Origin) -> String {
    format!(
        "[admin]\nenabled = true\nlisten = \"{admin}\"\ntoken = \"{TOKEN}\"\n\
         [wasm]\nenabled = true\nmodules_dir = {modules_dir:?}\n\
         [[wasm.modules]]\nname = \"swap\"\nfile = \"swap\"\nconfig = {{ greeting = \"A\", tag = \"B\" }}\n\
         [[wasm.chains]]\npath_prefix = \"/live/\"\nmodules = [\"swap\"]\n{}",
        upstream_config(origin, None)
    )
}

/// An origin serving `body` at `/live/a.ts`, a modules directory holding the template as
/// `swap.wasm`, and a proxy running it (see [`swap_config`]) with its admin address.
async fn swap_proxy(body: &[u8]) -> (Origin, std::path::PathBuf, SocketAddr, Proxy) {
    let origin = Origin::start().await;
    origin.set("/live/a.ts", Reply::ok(body.to_vec()));
    let dir = temp_dir("modules");
    install_module("module-template", &dir, "swap");
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let proxy = Proxy::start(&swap_config(&dir, admin, &origin)).await;
    (origin, dir, admin, proxy)
}

/// Which of the two versions answered: the template sets `x-module-template`, the test guest
/// `x-test-guest`. `None` when neither or both did.
fn version_of(resp: &Response) -> Option<&'static str> {
    match (
        resp.header("x-module-template"),
        resp.header("x-test-guest"),
    ) {
        (Some("A"), None) => Some("module-template"),
        (None, Some("B")) => Some("test-guest"),
        _ => None,
    }
}

#[tokio::test]
async fn a_hundred_swaps_through_the_watched_directory_under_load_fail_no_request_and_each_is_live_within_a_second(
) {
    let (_origin, dir, _admin, proxy) = swap_proxy(&pattern(5000, 9)).await;

    // Viewers fetching continuously while the module is swapped under them.
    let stop = Arc::new(AtomicBool::new(false));
    let results = Arc::new(Mutex::new(Vec::new()));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, results, addr) = (stop.clone(), results.clone(), proxy.addr);
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let outcome = match get(addr, "/live/a.ts").await {
                    Ok(resp) => {
                        let ok =
                            resp.status == 200 && resp.complete && resp.body == pattern(5000, 9);
                        (ok, version_of(&resp), resp.status)
                    }
                    Err(_) => (false, None, 0),
                };
                results.lock().unwrap().push(outcome);
                // Paced so 30 s of new connections stay far from the ephemeral port range
                // (each closed connection sits in TIME_WAIT for a minute).
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }

    let versions = ["test-guest", "module-template"];
    let mut first_seen = Vec::new();
    let mut live_after = Vec::new();
    for swap in 0..100 {
        let next = versions[swap % 2];
        install_module(next, &dir, "swap");
        let landed = Instant::now();
        loop {
            let resp = get(proxy.addr, "/live/a.ts").await.unwrap();
            if version_of(&resp) == Some(next) {
                break;
            }
            assert!(
                landed.elapsed() < Duration::from_secs(30),
                "swap {swap} to {next} never went live:\n{}",
                proxy.log()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The first swap to each version compiles it; later ones reuse the kept version.
        if swap < 2 {
            first_seen.push(landed.elapsed());
        } else {
            live_after.push(landed.elapsed());
        }
    }
    stop.store(true, Ordering::SeqCst);
    for task in load {
        task.await.unwrap();
    }

    let results = results.lock().unwrap();
    let failed = results.iter().filter(|(ok, _, _)| !ok).count();
    let mixed = results.iter().filter(|(_, v, _)| v.is_none()).count();
    assert!(
        results.len() > 100,
        "the load ran: {} requests",
        results.len()
    );
    let statuses: Vec<u16> = results
        .iter()
        .filter(|(ok, _, _)| !ok)
        .map(|(_, _, status)| *status)
        .collect();
    assert_eq!(
        failed,
        0,
        "failed requests among {} (statuses, 0 = no response): {statuses:?}\n{}",
        results.len(),
        proxy
            .log()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("status=5"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(mixed, 0, "responses not from exactly one version");
    let slowest = live_after.iter().max().copied().unwrap_or_default();
    eprintln!(
        "{} requests during 100 swaps; first load of each version live after {first_seen:?}, \
         later swaps after at most {slowest:?}",
        results.len()
    );
    assert!(
        slowest <= Duration::from_secs(1),
        "a swap was live only after {slowest:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

async fn admin_call(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {TOKEN}");
    let resp = send_body(admin, method, path, &[("authorization", &auth)], body)
        .await
        .unwrap();
    let json = serde_json::from_slice(&resp.body).unwrap_or(serde_json::Value::Null);
    (resp.status, json)
}

#[tokio::test]
async fn uploads_activate_atomically_persist_and_roll_back_and_a_rejected_upload_changes_nothing() {
    let (_origin, dir, admin, proxy) = swap_proxy(b"segment").await;
    let which = || async { version_of(&get(proxy.addr, "/live/a.ts").await.unwrap()) };
    assert_eq!(which().await, Some("module-template"));

    // Upload the other version: live as soon as the upload answers, and written to the dir.
    let guest = std::fs::read(guest_module("test-guest")).unwrap();
    let (status, body) = admin_call(admin, "POST", "/modules/swap", &guest).await;
    assert_eq!(status, 201, "{body}\n{}", proxy.log());
    let uploaded = body["active"]["version"].as_str().unwrap().to_owned();
    assert_eq!(which().await, Some("test-guest"));
    assert_eq!(
        std::fs::read(dir.join("swap.wasm")).unwrap(),
        guest,
        "persisted for restarts"
    );

    // Rejected uploads: each says why, and the running version stays.
    let unknown_import = wat::parse_str(UNKNOWN_IMPORT_WAT).unwrap();
    for (bytes, why) in [
        (CORE_MODULE.to_vec(), "not a component"),
        (unknown_import, "acme:secrets/vault"),
        (b"definitely not wasm".to_vec(), "invalid component"),
    ] {
        let (status, body) = admin_call(admin, "POST", "/modules/swap", &bytes).await;
        assert_eq!(status, 422, "{body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(why), "{error}");
        assert_eq!(which().await, Some("test-guest"));
    }
    assert_eq!(std::fs::read(dir.join("swap.wasm")).unwrap(), guest);
    let (status, _) = admin_call(admin, "POST", "/modules/nope", &guest).await;
    assert_eq!(status, 404, "a file no entry uses");

    // The listing shows both versions, the upload active.
    let (status, list) = admin_call(admin, "GET", "/modules", b"").await;
    assert_eq!(status, 200);
    let file = &list[0];
    assert_eq!(file["file"], "swap");
    assert_eq!(file["modules"][0], "swap");
    assert_eq!(file["active"], uploaded.as_str());
    assert_eq!(file["versions"].as_array().unwrap().len(), 2, "{list}");
    let original = file["versions"][1]["version"].as_str().unwrap().to_owned();

    // Roll back, then activate the upload again by version.
    let (status, body) = admin_call(admin, "POST", "/modules/swap/rollback", b"").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["active"]["version"], original.as_str());
    assert_eq!(which().await, Some("module-template"));
    let (status, _) = admin_call(
        admin,
        "POST",
        &format!("/modules/swap/activate?version={}", &uploaded[..8]),
        b"",
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(which().await, Some("test-guest"));
    let (status, _) = admin_call(
        admin,
        "POST",
        "/modules/swap/activate?version=ffffffff",
        b"",
    )
    .await;
    assert_eq!(status, 404);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_invalid_file_dropped_in_the_directory_is_rejected_with_a_log_line_and_the_running_version_stays(
) {
    let (_origin, dir, _admin, proxy) = swap_proxy(b"segment").await;

    std::fs::write(
        dir.join(".swap.tmp"),
        wat::parse_str(UNKNOWN_IMPORT_WAT).unwrap(),
    )
    .unwrap();
    std::fs::rename(dir.join(".swap.tmp"), dir.join("swap.wasm")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !proxy.log().contains("module file rejected") {
        assert!(
            Instant::now() < deadline,
            "no rejection logged:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        proxy.log().contains("acme:secrets/vault"),
        "{}",
        proxy.log()
    );
    for _ in 0..5 {
        let resp = get(proxy.addr, "/live/a.ts").await.unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(version_of(&resp), Some("module-template"));
    }

    // A good file afterwards is picked up as usual.
    install_module("test-guest", &dir, "swap");
    let deadline = Instant::now() + Duration::from_secs(10);
    while version_of(&get(proxy.addr, "/live/a.ts").await.unwrap()) != Some("test-guest") {
        assert!(
            Instant::now() < deadline,
            "good file not loaded:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs the proxy binary with `config` (written to a file in `dir`) and `-t`; returns its
/// exit success and output.
fn proxy_test_config(dir: &Path, config: &str) -> (bool, String) {
    let path = dir.join("proxy.toml");
    std::fs::write(&path, config).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_proxy"))
        .arg("--config")
        .arg(&path)
        .arg("-t")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test]
async fn startup_refuses_a_missing_module_an_unknown_import_and_a_failing_self_test_naming_each() {
    let origin = Origin::start().await;
    let dir = temp_dir("modules");
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = swap_config(&dir, admin, &origin);
    let config = format!("{config}\n[listen]\nhttp = \"127.0.0.1:{}\"\n", free_port());

    let (ok, out) = proxy_test_config(&dir, &config);
    assert!(!ok);
    assert!(
        out.contains("swap.wasm") && out.contains("No such file"),
        "{out}"
    );

    std::fs::write(
        dir.join("swap.wasm"),
        wat::parse_str(UNKNOWN_IMPORT_WAT).unwrap(),
    )
    .unwrap();
    let (ok, out) = proxy_test_config(&dir, &config);
    assert!(!ok);
    assert!(
        out.contains("imports something this proxy does not provide"),
        "{out}"
    );

    install_module("test-guest", &dir, "swap");
    let failing = config.replace("greeting = \"A\"", "behave = \"fail-self-test\"");
    let (ok, out) = proxy_test_config(&dir, &failing);
    assert!(!ok);
    assert!(
        out.contains("self-test failed") && out.contains("told to fail"),
        "{out}"
    );

    let (ok, out) = proxy_test_config(&dir, &config);
    assert!(ok, "a valid module passes -t:\n{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn proxy_module_check_reports_hooks_or_the_reason_a_module_would_be_rejected() {
    let check = |file: &Path, config: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_proxy"));
        command.args(["module", "check"]).arg(file);
        for pair in config {
            command.args(["--config", pair]);
        }
        let output = command.output().unwrap();
        (
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    };
    let (ok, out) = check(&guest_module("module-template"), &[]);
    assert!(ok, "{out}");
    assert!(out.contains("exports request-hook, response-hook"), "{out}");

    let (ok, out) = check(&guest_module("token-auth"), &[]);
    assert!(!ok, "token-auth's self-test refuses a missing key: {out}");
    assert!(out.contains("self-test failed"), "{out}");
    let key = "key=00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let (ok, out) = check(&guest_module("token-auth"), &[key]);
    assert!(ok, "{out}");

    let dir = temp_dir("check");
    for (name, bytes, why) in [
        ("core.wasm", CORE_MODULE.to_vec(), "not a component"),
        (
            "import.wasm",
            wat::parse_str(UNKNOWN_IMPORT_WAT).unwrap(),
            "imports something this proxy does not provide",
        ),
    ] {
        std::fs::write(dir.join(name), bytes).unwrap();
        let (ok, out) = check(&dir.join(name), &[]);
        assert!(!ok);
        assert!(out.contains(why), "{out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
