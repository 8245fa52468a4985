//! Should this message be archived, and why; users' archiving preferences.

use std::collections::BTreeSet;

/// XEP-0313 `<prefs default='…'>`: what happens to messages with JIDs on neither list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultPolicy {
    /// Archive everything.
    Always,
    /// Archive nothing.
    Never,
    /// Archive messages with contacts in the user's roster.
    Roster,
}

impl DefaultPolicy {
    /// The XEP-0313 attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            DefaultPolicy::Always => "always",
            DefaultPolicy::Never => "never",
            DefaultPolicy::Roster => "roster",
        }
    }

    /// Parses the XEP-0313 attribute value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "always" => Some(DefaultPolicy::Always),
            "never" => Some(DefaultPolicy::Never),
            "roster" => Some(DefaultPolicy::Roster),
            _ => None,
        }
    }
}

/// One user's archiving preferences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefs {
    pub default: DefaultPolicy,
    /// Bare JIDs whose messages are always archived.
    pub always: BTreeSet<String>,
    /// Bare JIDs whose messages are never archived (wins over `always`).
    pub never: BTreeSet<String>,
}

impl Prefs {
    /// Preferences with only a default.
    pub fn with_default(default: DefaultPolicy) -> Self {
        Prefs {
            default,
            always: BTreeSet::new(),
            never: BTreeSet::new(),
        }
    }
}
