//! Dependency rules that keep each crate usable where it is meant to be used: the protocol crate
//! stays sans-IO (no runtime, no system-call crate in its normal dependencies), and the warden
//! library without its `cli` feature carries none of the CLI's crates.

use std::process::Stdio;

use warden_tests::MARKER_VAR;

use crate::support::*;

const FORBIDDEN: [&str; 5] = ["tokio", "nix", "libc", "interprocess", "mio"];

/// What only the `warden` binary needs.
const CLI_ONLY: [&str; 3] = ["clap", "serde_json", "tracing-subscriber"];

/// One line of `cargo tree --prefix depth`: how deep, and the crate's name.
struct Dep {
    depth: usize,
    name: String,
}

/// The normal dependency tree of `package` (itself at depth 0), with `extra` arguments for
/// `cargo tree`; `None` (the test is skipped) when cargo is not there to ask.
async fn normal_tree(t: &Ctx, package: &str, extra: &[&str]) -> Option<(Vec<Dep>, String)> {
    // Cargo sets CARGO for the tests it runs; otherwise look in PATH.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = tokio::process::Command::new(&cargo);
    cmd.args([
        "tree",
        "-p",
        package,
        "-e",
        "normal",
        "--prefix",
        "depth",
        "--offline",
    ])
    .args(extra)
    .current_dir(env!("CARGO_MANIFEST_DIR"))
    .env(MARKER_VAR, t.marker())
    .stdin(Stdio::null())
    .kill_on_drop(true);
    let output = match within(LIMIT * 3, "cargo tree", cmd.output()).await {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("skipped: cargo ({cargo:?}) is not on PATH");
            return None;
        }
        Err(e) => panic!("could not run cargo tree: {e}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "cargo tree failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let deps = stdout
        .lines()
        .filter_map(|line| {
            let name_at = line.find(|c: char| !c.is_ascii_digit())?;
            let depth = line[..name_at].parse().ok()?;
            let name = line[name_at..].split_whitespace().next()?.to_owned();
            Some(Dep { depth, name })
        })
        .collect::<Vec<_>>();
    assert!(
        deps.iter().any(|d| d.depth == 0 && d.name == package),
        "{stdout}"
    );
    Some((deps, stdout))
}

#[test]
fn protocol_depends_on_no_io_crate() {
    e2e("protocol_depends_on_no_io_crate", |t| async move {
        let Some((deps, stdout)) = normal_tree(&t, "warden-protocol", &[]).await else {
            return;
        };
        for name in FORBIDDEN {
            assert!(
                !deps.iter().any(|d| d.name == name),
                "warden-protocol depends on {name}:\n{stdout}"
            );
        }
    });
}

#[test]
fn library_without_cli_feature_has_no_cli_crate() {
    e2e(
        "library_without_cli_feature_has_no_cli_crate",
        |t| async move {
            let Some((deps, stdout)) = normal_tree(&t, "warden", &["--no-default-features"]).await
            else {
                return;
            };
            for name in CLI_ONLY {
                assert!(
                    !deps.iter().any(|d| d.name == name),
                    "warden without `cli` depends on {name}:\n{stdout}"
                );
            }
            // serde comes only through warden-protocol's wire format, never from warden itself.
            assert!(
                !deps.iter().any(|d| d.depth == 1 && d.name == "serde"),
                "warden depends on serde itself:\n{stdout}"
            );
            // The check can see them: with its default features the tree has the CLI's crates.
            let Some((with_cli, stdout)) = normal_tree(&t, "warden", &[]).await else {
                return;
            };
            for name in CLI_ONLY {
                assert!(
                    with_cli.iter().any(|d| d.depth == 1 && d.name == name),
                    "the cli feature no longer brings {name}: update CLI_ONLY\n{stdout}"
                );
            }
        },
    );
}
