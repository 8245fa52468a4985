//! The one shape in which an expected failure reaches Lua: `nil, err` where `err` is
//! `{ type =, condition =, text =, log = }` — `type`, `condition` and `text` ready for
//! `st.error_reply` (never internals), `log` for the module's log. Some failures add
//! one field: `code` (a `prosodyctl` exit code), `config` (a bad option: the load
//! fails), `reason` (a message not archived on purpose: the skip metric's label).
//!
//! Every export answers through [`returned`] or [`failure`], so the table is built in
//! this one place; bugs raise Lua errors instead.

use mlua::{IntoLuaMulti, Lua, MultiValue, Result as LuaResult, Value};

use crate::admin::AdminError;
use crate::error::MamError;

/// An expected failure, as Lua will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// XMPP error type (`wait`, `modify`, `cancel`).
    pub error_type: &'static str,
    /// XMPP defined condition.
    pub condition: &'static str,
    /// Human-readable text for the client, when it is safe to show.
    pub text: Option<String>,
    /// The full cause, for the log.
    pub log: String,
    /// `prosodyctl` exit code (operations only).
    pub code: Option<i32>,
    /// A configuration error: the module must not load.
    pub config: bool,
    /// Not an error but a decision not to archive: the reason.
    pub reason: Option<&'static str>,
}

impl From<&MamError> for Failure {
    fn from(e: &MamError) -> Failure {
        let x = e.to_xmpp();
        Failure {
            error_type: x.error_type,
            condition: x.condition,
            text: x.text,
            log: e.to_string(),
            code: None,
            config: matches!(e, MamError::Config(_)),
            reason: None,
        }
    }
}

impl From<MamError> for Failure {
    fn from(e: MamError) -> Failure {
        Failure::from(&e)
    }
}

impl From<AdminError> for Failure {
    fn from(e: AdminError) -> Failure {
        let (error_type, condition) = match e {
            AdminError::Usage(_) => ("modify", "bad-request"),
            AdminError::Failed(_) => ("wait", "internal-server-error"),
        };
        Failure {
            error_type,
            condition,
            text: None,
            code: Some(e.exit_code()),
            log: e.message().to_owned(),
            config: false,
            reason: None,
        }
    }
}

impl Failure {
    /// A message deliberately not archived (`reason` is the skip metric's label).
    pub fn not_stored(reason: &'static str, log: &str) -> Failure {
        Failure {
            error_type: "cancel",
            condition: "not-acceptable",
            text: None,
            log: log.to_owned(),
            code: None,
            config: false,
            reason: Some(reason),
        }
    }

    /// The `err` table.
    pub fn to_lua(&self, lua: &Lua) -> LuaResult<mlua::Table> {
        let t = lua.create_table_with_capacity(0, 5)?;
        t.raw_set("type", self.error_type)?;
        t.raw_set("condition", self.condition)?;
        if let Some(text) = &self.text {
            t.raw_set("text", text.as_str())?;
        }
        t.raw_set("log", self.log.as_str())?;
        if let Some(code) = self.code {
            t.raw_set("code", code)?;
        }
        if self.config {
            t.raw_set("config", true)?;
        }
        if let Some(reason) = self.reason {
            t.raw_set("reason", reason)?;
        }
        Ok(t)
    }
}

/// `nil, err`.
pub fn failure(lua: &Lua, f: impl Into<Failure>) -> LuaResult<MultiValue> {
    let err = f.into().to_lua(lua)?;
    Ok(MultiValue::from_iter([Value::Nil, Value::Table(err)]))
}

/// The values of `Ok`, or `nil, err`.
pub fn returned<T: IntoLuaMulti, E: Into<Failure>>(
    lua: &Lua,
    result: Result<T, E>,
) -> LuaResult<MultiValue> {
    match result {
        Ok(v) => v.into_lua_multi(lua),
        Err(e) => failure(lua, e),
    }
}

#[cfg(all(test, feature = "vendored"))]
mod tests {
    use super::*;

    #[test]
    fn a_client_error_carries_its_condition_and_text_and_the_log_its_cause() {
        let lua = Lua::new();
        let mv = failure(&lua, MamError::ItemNotFound("no such id 'x'".into())).unwrap();
        let mut values = mv.into_iter();
        assert_eq!(values.next(), Some(Value::Nil));
        let Some(Value::Table(err)) = values.next() else {
            panic!("no err table")
        };
        assert_eq!(err.get::<String>("type").unwrap(), "cancel");
        assert_eq!(err.get::<String>("condition").unwrap(), "item-not-found");
        assert_eq!(err.get::<String>("text").unwrap(), "no such id 'x'");
        assert_eq!(err.get::<String>("log").unwrap(), "no such id 'x'");
        assert_eq!(err.get::<Option<i32>>("code").unwrap(), None);
    }

    #[test]
    fn a_storage_error_shows_the_client_nothing_of_its_cause() {
        let f = Failure::from(MamError::Open {
            path: "/var/lib/prosody/mam_archive.sqlite".into(),
            cause: "disk I/O error".into(),
        });
        assert_eq!(
            (f.error_type, f.condition),
            ("wait", "internal-server-error")
        );
        assert_eq!(f.text, None);
        assert!(f.log.contains("disk I/O error"));
    }

    #[test]
    fn a_bad_option_is_marked_config_and_an_operation_carries_its_exit_code() {
        assert!(Failure::from(MamError::Config("invalid value".into())).config);
        let usage = Failure::from(AdminError::Usage("Missing USER@HOST".into()));
        assert_eq!(
            (usage.code, usage.log.as_str()),
            (Some(2), "Missing USER@HOST")
        );
        assert_eq!(Failure::from(AdminError::Failed("x".into())).code, Some(1));
    }

    #[test]
    fn ok_values_pass_through_unchanged() {
        let lua = Lua::new();
        let mv = returned::<_, MamError>(&lua, Ok((7, true))).unwrap();
        assert_eq!(
            mv.into_iter().collect::<Vec<_>>(),
            vec![Value::Integer(7), Value::Boolean(true)]
        );
    }
}
