//! The workers under test: how to start each SDK's conformance worker.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::peer::SPAWN;
use crate::support::Ctx;
use warden_tests::MARKER_VAR;

/// A worker command that implements the modes of `protocol/CONFORMANCE.md`.
#[derive(Debug, Clone)]
pub struct Sdk {
    /// Short name, in test names and messages.
    pub name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// The repository's root (this package is `tests/`).
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

impl Sdk {
    /// The Rust SDK's `conformance-worker`.
    pub fn rust() -> Option<Sdk> {
        Some(Sdk {
            name: "rust",
            program: env!("CARGO_BIN_EXE_conformance-worker").into(),
            args: Vec::new(),
            env: Vec::new(),
        })
    }

    /// `sdk/python/tests/conformance_worker.py VARIANT` on the package's source tree, with the
    /// interpreter named by `WARDEN_PYTHON` (default `python3`). Without an interpreter the
    /// case fails, unless `WARDEN_CONFORMANCE_SKIP_PYTHON=1` says to skip it (loudly).
    pub fn python(variant: &str) -> Option<Sdk> {
        let python = std::env::var("WARDEN_PYTHON").unwrap_or_else(|_| "python3".into());
        if let Err(why) = python_version(&python) {
            if std::env::var_os("WARDEN_CONFORMANCE_SKIP_PYTHON").is_some() {
                eprintln!(
                    "SKIPPING the Python SDK's conformance cases (WARDEN_CONFORMANCE_SKIP_PYTHON \
                     is set): {why}"
                );
                return None;
            }
            panic!(
                "the Python SDK's conformance cases need a Python 3.9+ interpreter: {why}. \
                 Install python3 (or set WARDEN_PYTHON), or set WARDEN_CONFORMANCE_SKIP_PYTHON=1 \
                 to skip these cases"
            );
        }
        let sdk = root().join("sdk/python");
        Some(Sdk {
            name: if variant == "async" {
                "python_async"
            } else {
                "python"
            },
            program: python.into(),
            args: vec![
                // No user site-packages or bytecode files: the source tree as it is.
                "-sB".into(),
                sdk.join("tests/conformance_worker.py")
                    .to_string_lossy()
                    .into_owned(),
                variant.into(),
            ],
            env: vec![("PYTHONPATH".into(), sdk.to_string_lossy().into_owned())],
        })
    }

    /// For the real supervisor.
    pub fn command(&self, t: &Ctx) -> warden::Command {
        let mut cmd = warden::Command::new(&self.program);
        cmd.args(&self.args).env(MARKER_VAR, t.marker());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// For the hand-written supervisor (spawn it under [`SPAWN`]).
    pub fn std_command(&self, t: &Ctx) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.program);
        cmd.args(&self.args)
            .env(MARKER_VAR, t.marker())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null());
        cmd
    }
}

/// `python --version`, once per run.
fn python_version(python: &str) -> Result<(), String> {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let _spawning = SPAWN.lock().unwrap_or_else(|e| e.into_inner());
            let out = std::process::Command::new(python)
                .args([
                    "-c",
                    "import sys; assert sys.version_info >= (3, 9), sys.version",
                ])
                .output()
                .map_err(|e| format!("`{python}` cannot be run: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "`{python}` is not Python 3.9 or later: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        })
        .clone()
}
