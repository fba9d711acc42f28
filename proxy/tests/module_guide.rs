//! Executes docs/modules.md's "Writing your own module" steps 1 and 3 as an operator would: copy
//! the template and `wit/` out of the repository, rename the crate, build it with
//! `cargo build --release --target wasm32-wasip2`, and check that the result is a component
//! exporting the template's hooks.

use std::path::{Path, PathBuf};
use std::process::Command;

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

#[test]
fn the_guides_copy_and_build_steps_produce_a_component_with_the_templates_hooks() {
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
    assert!(contains(b"parallax:policy/request-hook@0.1.0"));
    assert!(contains(b"parallax:policy/response-hook@0.1.0"));
    assert!(
        !contains(b"parallax:policy/body-hook@0.1.0"),
        "the template exports no body hook"
    );
    std::fs::remove_dir_all(&edge).unwrap();
}
