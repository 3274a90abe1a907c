//! The protocol crate stays sans-IO: no runtime, no system-call crate in its normal
//! dependencies.

use std::process::Stdio;

use warden_tests::MARKER_VAR;

use crate::support::*;

const FORBIDDEN: [&str; 5] = ["tokio", "nix", "libc", "interprocess", "mio"];

#[test]
fn protocol_depends_on_no_io_crate() {
    e2e("protocol_depends_on_no_io_crate", |t| async move {
        // Cargo sets CARGO for the tests it runs; otherwise look in PATH.
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = tokio::process::Command::new(&cargo);
        cmd.args([
            "tree",
            "-p",
            "warden-protocol",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env(MARKER_VAR, t.marker())
        .stdin(Stdio::null())
        .kill_on_drop(true);
        let output = match within(LIMIT * 3, "cargo tree", cmd.output()).await {
            Ok(output) => output,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("skipped: cargo ({cargo:?}) is not on PATH");
                return;
            }
            Err(e) => panic!("could not run cargo tree: {e}"),
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "cargo tree failed: {}\n{stdout}",
            String::from_utf8_lossy(&output.stderr)
        );
        let crates: Vec<&str> = stdout
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .collect();
        assert!(crates.contains(&"warden-protocol"), "{stdout}");
        for name in FORBIDDEN {
            assert!(
                !crates.contains(&name),
                "warden-protocol depends on {name}:\n{stdout}"
            );
        }
    });
}
