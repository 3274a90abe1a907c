//! Choosing the containment from the command line or the environment.

use warden::Containment;

/// The environment variable `warden timeout` (whose options must stay GNU's) reads its
/// containment from; `warden run --containment` overrides it.
pub(crate) const CONTAINMENT_ENV: &str = "WARDEN_CONTAINMENT";

/// A containment as the user spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub(crate) enum ContainmentArg {
    /// The strongest available: cgroup, else subreaper, else process group.
    #[default]
    Auto,
    /// A cgroup v2 leaf per tree (fails if warden cannot create one).
    Cgroup,
    /// warden becomes a child subreaper and sweeps adopted descendants.
    Subreaper,
    /// The process group only: descendants that leave it escape.
    ProcessGroup,
}

impl ContainmentArg {
    /// The library's value.
    pub(crate) fn to_containment(self) -> Containment {
        match self {
            ContainmentArg::Auto => Containment::Auto,
            ContainmentArg::Cgroup => Containment::Cgroup,
            ContainmentArg::Subreaper => Containment::Subreaper,
            ContainmentArg::ProcessGroup => Containment::ProcessGroup,
        }
    }

    /// Parses a user's spelling: `auto`, `cgroup`, `subreaper`, `process-group` (or
    /// `process_group`), in any case.
    pub(crate) fn parse(text: &str) -> Option<ContainmentArg> {
        match text.to_ascii_lowercase().replace('_', "-").as_str() {
            "auto" => Some(ContainmentArg::Auto),
            "cgroup" => Some(ContainmentArg::Cgroup),
            "subreaper" => Some(ContainmentArg::Subreaper),
            "process-group" => Some(ContainmentArg::ProcessGroup),
            _ => None,
        }
    }

    /// The value of [`CONTAINMENT_ENV`]: `Ok(None)` when unset or empty, `Err` with the text
    /// when it names no containment.
    pub(crate) fn from_env() -> Result<Option<ContainmentArg>, String> {
        match std::env::var_os(CONTAINMENT_ENV) {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => {
                let text = v.to_string_lossy().into_owned();
                ContainmentArg::parse(&text).map(Some).ok_or(text)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings() {
        assert_eq!(ContainmentArg::parse("auto"), Some(ContainmentArg::Auto));
        assert_eq!(
            ContainmentArg::parse("CGroup"),
            Some(ContainmentArg::Cgroup)
        );
        assert_eq!(
            ContainmentArg::parse("process_group"),
            Some(ContainmentArg::ProcessGroup)
        );
        assert_eq!(
            ContainmentArg::parse("process-group"),
            Some(ContainmentArg::ProcessGroup)
        );
        assert_eq!(ContainmentArg::parse("pg"), None);
    }
}
