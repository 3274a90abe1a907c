//! Stand-in where cgroups do not exist: no leaf can ever be created.

use std::io;
use std::path::PathBuf;

/// Never constructed.
#[derive(Debug)]
pub(crate) struct Cgroup(());

impl Cgroup {
    pub(crate) fn create() -> Option<Cgroup> {
        None
    }
    pub(crate) fn procs_file(&self) -> PathBuf {
        PathBuf::new()
    }
    pub(crate) fn add(&self, _pid: u32) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    pub(crate) fn pids(&self) -> Vec<u32> {
        Vec::new()
    }
    pub(crate) fn kill(&self) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    pub(crate) fn open_kill(&self) -> io::Result<std::fs::File> {
        Err(io::ErrorKind::Unsupported.into())
    }

    pub(crate) fn populated(&self) -> bool {
        false
    }
    pub(crate) fn set_frozen(&self, _frozen: bool) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    pub(crate) fn frozen(&self) -> bool {
        false
    }
}
