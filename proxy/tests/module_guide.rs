//! Executes docs/modules.md's "Writing your own module" steps 1, 3 and 4 as an operator would:
//! copy the template and `wit/` out of the repository, rename the crate, build it with
//! `cargo build --release --target wasm32-wasip2`, check that the result is a component
//! exporting the template's hooks, then drop it into a proxy's modules directory with the
//! guide's config and see it answer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `cp -r`, skipping build output.
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_name() == "target" {
            continue;
        }
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_guides_copy_build_and_deploy_steps_put_the_templates_hooks_on_a_running_proxy() {
    let root = repo_root();
    let edge = std::env::temp_dir().join(format!("parallax-module-guide-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&edge);
    // Step 1, the standalone variant: wit/ and the template copied out, the lock file beside it.
    copy_dir(&root.join("wit"), &edge.join("wit")).unwrap();
    let module = edge.join("guest-modules/my-module");
    copy_dir(&root.join("guest-modules/template"), &module).unwrap();
    std::fs::copy(root.join("Cargo.lock"), module.join("Cargo.lock")).unwrap();
    let manifest = module.join("Cargo.toml");
    let renamed = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("name = \"module-template\"", "name = \"my-module\"");
    assert!(
        renamed.contains("name = \"my-module\""),
        "the guide's sed must find the name line"
    );
    std::fs::write(&manifest, renamed).unwrap();

    // Step 3. A shared CARGO_TARGET_DIR (as in this repository's scripts) reuses built deps.
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| edge.join("target"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .current_dir(&module)
        .env("CARGO_TARGET_DIR", &target_dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cargo build failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let wasm = std::fs::read(target_dir.join("wasm32-wasip2/release/my_module.wasm")).unwrap();
    // `\0asm`, then version 0x0d and layer 1: a component, not a core module.
    assert_eq!(
        &wasm[..8],
        b"\0asm\x0d\x00\x01\x00",
        "not a WebAssembly component"
    );
    let contains = |needle: &[u8]| wasm.windows(needle.len()).any(|w| w == needle);
    assert!(contains(b"parallax:policy/request-hook@0.2.1"));
    assert!(contains(b"parallax:policy/response-hook@0.2.1"));
    assert!(
        !contains(b"parallax:policy/body-hook@0.2.1"),
        "the template exports no body hook"
    );

    // Step 4: the guide's config, the file renamed into the watched directory.
    let origin = Origin::start().await;
    origin.set("/live/a/index.m3u8", Reply::ok("#EXTM3U\n"));
    let modules_dir = edge.join("modules");
    std::fs::create_dir_all(&modules_dir).unwrap();
    std::fs::write(modules_dir.join(".my-module.tmp"), &wasm).unwrap();
    std::fs::rename(
        modules_dir.join(".my-module.tmp"),
        modules_dir.join("my-module.wasm"),
    )
    .unwrap();
    let proxy = Proxy::start(&format!(
        "[wasm]\nenabled = true\nmodules_dir = {modules_dir:?}\n\
         [[wasm.modules]]\nname = \"my-module\"\nfailure = \"fail-open\"\n\
         config = {{ deny-prefix = \"/private/\", greeting = \"hi\" }}\n\
         [[wasm.chains]]\npath_prefix = \"/\"\nmodules = [\"my-module\"]\n{}",
        upstream_config(&origin, None)
    ))
    .await;
    let live = get(proxy.addr, "/live/a/index.m3u8").await.unwrap();
    assert_eq!(live.status, 200, "{}", proxy.log());
    assert_eq!(live.header("x-module-template"), Some("hi"));
    let private = get(proxy.addr, "/private/x.ts").await.unwrap();
    assert_eq!(private.status, 403);
    assert_eq!(origin.hits("/private/x.ts"), 0);
    drop(proxy);
    std::fs::remove_dir_all(&edge).unwrap();
}
