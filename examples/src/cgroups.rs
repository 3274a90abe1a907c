//! Finding the cgroups a warden supervisor made, so that a host (and its test) can check that
//! none is left behind: warden's base directories `warden-<pidns>-<pid>-<start>` under this
//! process's own cgroup, in the cgroup v2 hierarchy and in the v1 `memory` and `pids`
//! hierarchies (where limits go on hybrid hosts), and the per-tree leaves `tree-<n>` in them.
//!
//! Read-only: nothing here creates or removes a cgroup. A host without cgroups finds none.

use std::path::{Path, PathBuf};

/// This process's cgroup directories that can hold warden's bases: the v2 one and the v1
/// `memory` and `pids` ones, where mounted.
pub fn own_cgroup_dirs() -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let membership = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut dirs = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount) = left.split_whitespace().nth(4) else {
            continue;
        };
        let mut right = right.split_whitespace();
        let (fstype, options) = (right.next(), right.nth(1).unwrap_or_default());
        // The line of /proc/self/cgroup for this hierarchy: `0::PATH` for v2, `N:CTRLS:PATH`
        // for a v1 hierarchy whose controllers include the one we look for.
        let own = match fstype {
            Some("cgroup2") => membership.lines().find_map(|l| l.strip_prefix("0::")),
            Some("cgroup") => ["memory", "pids"]
                .into_iter()
                .find(|c| options.split(',').any(|o| o == *c))
                .and_then(|controller| {
                    membership.lines().find_map(|l| {
                        let mut parts = l.splitn(3, ':');
                        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
                        ctrls.split(',').any(|c| c == controller).then_some(path)
                    })
                }),
            _ => None,
        };
        if let Some(own) = own {
            dirs.push(Path::new(mount).join(own.trim_start_matches('/')));
        }
    }
    dirs.sort();
    dirs.dedup();
    dirs
}

/// warden's base directories for the supervisor `pid` under this process's cgroups (a
/// supervisor that is this process, or one of its children).
pub fn warden_bases(pid: u32) -> Vec<PathBuf> {
    let infix = format!("-{pid}-");
    own_cgroup_dirs()
        .iter()
        .flat_map(|dir| subdirs(dir))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("warden-") && n.contains(&infix))
        })
        .collect()
}

/// The per-tree leaves (`tree-<n>`) in the supervisor `pid`'s bases.
pub fn tree_leaves(pid: u32) -> Vec<PathBuf> {
    warden_bases(pid)
        .iter()
        .flat_map(|base| subdirs(base))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("tree-"))
        })
        .collect()
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}
