//! The storage provider's exports (`native.store`): Prosody's archive store API
//! handed to the running archive ([`crate::archive::provider`]) of an open handle.
//! `lua/mod_storage_mam_native/` calls them and waits for the answers.
//!
//! Every function takes the archive handle first and returns a job (or `nil, err`):
//!
//! - `find(handle, user, query)`, `summary(handle, user, query)`, `users(handle)`;
//! - `append(handle, user, key, stanza, when, with)`,
//!   `set(handle, user, key, stanza, when, with)`, `delete(handle, user, query)`
//!   (`user == true`: every owner of the host);
//! - `wait(handle, job, seconds)` -> the completion, or nil after `seconds`.
//!
//! `user` is stock's username (`nil` for host data). `query` holds stock's fields
//! (`start`, `end`, `with`, `key`, `ids`, `before`, `after`, `limit`, `reverse`,
//! `total`, `truncate`) plus `whole_seconds` (Prosody 0.12: times are whole seconds,
//! so `end = t` covers all of second `t`). Times are seconds; answers carry
//! microseconds (`when_us`), which the module turns into the seconds its Prosody
//! uses. An expected refusal is a completion `{ refused = "item-not-found" }`, or at
//! once `nil, "unsupported-datatype"`.

use mlua::{AnyUserData, IntoLuaMulti, Lua, MultiValue, Result as LuaResult, Table, Value};

use super::failure::{failure, returned};
use super::stanza_lua::{element_from_lua, element_to_lua};
use super::ArchiveHandle;
use crate::archive::provider::{Refusal, StoreAnswer, StoreQuery};
use crate::error::MamError;
use crate::mailbox::JobId;
use crate::time::Micros;

const MICROS_PER_SECOND: f64 = 1_000_000.0;

/// A time in seconds (integer or float) as microseconds; `round_up_to_second`: the
/// last microsecond of that whole second (an inclusive `end` on Prosody 0.12, whose
/// items carry whole seconds). Out-of-range values saturate; NaN is refused.
fn micros(seconds: f64, round_up_to_second: bool) -> LuaResult<Micros> {
    if seconds.is_nan() {
        return Err(mlua::Error::runtime(
            "mam_native: a time that is not a number",
        ));
    }
    let us = if round_up_to_second {
        seconds.floor() * MICROS_PER_SECOND + (MICROS_PER_SECOND - 1.0)
    } else {
        (seconds * MICROS_PER_SECOND).round()
    };
    // `as` saturates at the ends of i64.
    Ok(us as Micros)
}

fn optional_time(query: &Table, field: &str, round_up: bool) -> LuaResult<Option<Micros>> {
    match query.raw_get::<Option<f64>>(field)? {
        Some(t) => micros(t, round_up).map(Some),
        None => Ok(None),
    }
}

/// A Lua query table as a [`StoreQuery`]; `nil` is the empty query.
fn store_query(query: Option<Table>) -> LuaResult<StoreQuery> {
    let Some(query) = query else {
        return Ok(StoreQuery::default());
    };
    let whole_seconds = query
        .raw_get::<Option<bool>>("whole_seconds")?
        .unwrap_or(false);
    let ids = match query.raw_get::<Option<Table>>("ids")? {
        Some(t) => Some(
            t.sequence_values::<String>()
                .collect::<LuaResult<Vec<_>>>()?,
        ),
        None => None,
    };
    let count = |field: &str| -> LuaResult<Option<u64>> {
        Ok(query
            .raw_get::<Option<f64>>(field)?
            .map(|n| if n > 0.0 { n.floor() as u64 } else { 0 }))
    };
    Ok(StoreQuery {
        start: match query.raw_get::<Option<f64>>("start")? {
            Some(t) if whole_seconds => Some(micros(t.floor(), false)?),
            Some(t) => Some(micros(t, false)?),
            None => None,
        },
        end: optional_time(&query, "end", whole_seconds)?,
        with: query.raw_get("with")?,
        key: query.raw_get("key")?,
        ids,
        before: query.raw_get("before")?,
        after: query.raw_get("after")?,
        limit: count("limit")?.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        reverse: query.raw_get::<Option<bool>>("reverse")?.unwrap_or(false),
        total: query.raw_get::<Option<bool>>("total")?.unwrap_or(false),
        truncate: count("truncate")?,
    })
}

fn job_returned(lua: &Lua, job: crate::error::Result<JobId>) -> LuaResult<MultiValue> {
    returned(lua, job.map(|j| j as i64))
}

/// A job, or `nil, "<refusal>"` as stock drivers answer.
fn job_or_refusal(
    lua: &Lua,
    job: crate::error::Result<std::result::Result<JobId, Refusal>>,
) -> LuaResult<MultiValue> {
    match job {
        Ok(Ok(job)) => (job as i64).into_lua_multi(lua),
        Ok(Err(refusal)) => (Value::Nil, refusal.as_str()).into_lua_multi(lua),
        Err(e) => failure(lua, e),
    }
}

/// The handle's user (stock's username): a string, or `nil` for host data.
fn user_arg(user: &Value) -> LuaResult<Option<String>> {
    match user {
        Value::Nil => Ok(None),
        Value::String(s) => Ok(Some(s.to_str()?.to_owned())),
        other => Err(mlua::Error::runtime(format!(
            "mam_native: a username must be a string or nil, not {}",
            other.type_name()
        ))),
    }
}

fn find(
    lua: &Lua,
    (ud, user, query): (AnyUserData, Value, Option<Table>),
) -> LuaResult<MultiValue> {
    let mut handle = ud.borrow_mut::<ArchiveHandle>()?;
    let (user, query) = (user_arg(&user)?, store_query(query)?);
    let job = handle.archive()?.store_find(user.as_deref(), &query);
    job_returned(lua, job)
}

fn summary(
    lua: &Lua,
    (ud, user, query): (AnyUserData, Value, Option<Table>),
) -> LuaResult<MultiValue> {
    let mut handle = ud.borrow_mut::<ArchiveHandle>()?;
    let (user, query) = (user_arg(&user)?, store_query(query)?);
    let job = handle.archive()?.store_summary(user.as_deref(), &query);
    job_returned(lua, job)
}

fn users(lua: &Lua, ud: AnyUserData) -> LuaResult<MultiValue> {
    let mut handle = ud.borrow_mut::<ArchiveHandle>()?;
    let job = handle.archive()?.store_users();
    job_returned(lua, job)
}

type WriteArgs = (
    AnyUserData,
    Value,
    Option<String>,
    Option<Table>,
    Option<f64>,
    Option<String>,
);

fn append(lua: &Lua, (ud, user, key, stanza, when, with): WriteArgs) -> LuaResult<MultiValue> {
    let mut handle = ud.borrow_mut::<ArchiveHandle>()?;
    let user = user_arg(&user)?;
    let Some(stanza) = stanza else {
        return (Value::Nil, Refusal::UnsupportedDatatype.as_str()).into_lua_multi(lua);
    };
    let Ok(el) = element_from_lua(lua, &stanza) else {
        // Deeper than we represent: not something this store can keep.
        return (Value::Nil, Refusal::UnsupportedDatatype.as_str()).into_lua_multi(lua);
    };
    let when = when.map(|t| micros(t, false)).transpose()?;
    let job = handle
        .archive()?
        .store_append(user.as_deref(), key, el, when, with.as_deref());
    job_or_refusal(lua, job)
}

fn set(lua: &Lua, (ud, user, key, stanza, when, with): WriteArgs) -> LuaResult<MultiValue> {
    let mut handle = ud.borrow_mut::<ArchiveHandle>()?;
    let user = user_arg(&user)?;
    let Some(key) = key else {
        return (Value::Nil, Refusal::ItemNotFound.as_str()).into_lua_multi(lua);
    };
    let el = match stanza {
        Some(t) => match element_from_lua(lua, &t) {
            Ok(el) => Some(el),
            Err(_) => {
                return (Value::Nil, Refusal::UnsupportedDatatype.as_str()).into_lua_multi(lua)
            }
        },
        None => None,
    };
    let when = when.map(|t| micros(t, false)).transpose()?;
    let job = handle
        .archive()?
        .store_set(user.as_deref(), &key, el, when, with.as_deref());
    job_or_refusal(lua, job)
}

fn delete(
    lua: &Lua,
    (ud, user, query): (AnyUserData, Value, Option<Table>),
) -> LuaResult<MultiValue> {
    let mut handle = ud.borrow_mut::<ArchiveHandle>()?;
    // `true`: every owner (stock's wildcard delete).
    let user = match user {
        Value::Boolean(true) => None,
        other => Some(user_arg(&other)?.unwrap_or_default()),
    };
    let query = store_query(query)?;
    let job = handle.archive()?.store_delete(user.as_deref(), &query);
    job_returned(lua, job)
}

fn wait(lua: &Lua, (ud, job, seconds): (AnyUserData, JobId, f64)) -> LuaResult<Value> {
    let mut handle = ud.borrow_mut::<ArchiveHandle>()?;
    let timeout = std::time::Duration::from_secs_f64(seconds.clamp(0.0, 3600.0));
    match handle.archive()?.wait_for(job, timeout) {
        Some(c) => Ok(Value::Table(handle.completion_to_lua(lua, c)?)),
        None => Ok(Value::Nil),
    }
}

/// Fills a completion table from a provider answer (`Outcome::Provider`).
pub(super) fn answer_fields(
    lua: &Lua,
    t: &Table,
    answer: crate::error::Result<StoreAnswer>,
    stanza_mt: &Table,
) -> LuaResult<Option<MamError>> {
    let answer = match answer {
        Ok(answer) => answer,
        Err(e) => return Ok(Some(e)),
    };
    match answer {
        StoreAnswer::Items { items, total } => {
            let list = lua.create_table_with_capacity(items.len(), 0)?;
            for item in items {
                let it = lua.create_table_with_capacity(0, 4)?;
                it.raw_set("key", item.key)?;
                it.raw_set("stanza", element_to_lua(lua, &item.stanza, stanza_mt)?)?;
                it.raw_set("when_us", item.when)?;
                it.raw_set("with", item.with)?;
                list.raw_push(it)?;
            }
            t.raw_set("items", list)?;
            if let Some(total) = total {
                t.raw_set("total", total)?;
            }
        }
        StoreAnswer::Summary(entries) => {
            let (counts, earliest, latest, body) = (
                lua.create_table()?,
                lua.create_table()?,
                lua.create_table()?,
                lua.create_table()?,
            );
            for e in entries {
                counts.raw_set(e.with.as_str(), e.count)?;
                earliest.raw_set(e.with.as_str(), e.earliest)?;
                latest.raw_set(e.with.as_str(), e.latest)?;
                if let Some(b) = e.body {
                    body.raw_set(e.with.as_str(), b)?;
                }
            }
            t.raw_set("counts", counts)?;
            t.raw_set("earliest_us", earliest)?;
            t.raw_set("latest_us", latest)?;
            t.raw_set("body", body)?;
        }
        StoreAnswer::Users(users) => {
            t.raw_set("users", lua.create_sequence_from(users)?)?;
        }
        StoreAnswer::Stored(key) => t.raw_set("key", key)?,
        StoreAnswer::Changed => t.raw_set("changed", true)?,
        StoreAnswer::Deleted(n) => t.raw_set("deleted", n)?,
        StoreAnswer::Refused(refusal) => t.raw_set("refused", refusal.as_str())?,
    }
    Ok(None)
}

/// The `native.store` table.
pub fn exports(lua: &Lua) -> LuaResult<Table> {
    let t = lua.create_table()?;
    t.set("find", lua.create_function(find)?)?;
    t.set("summary", lua.create_function(summary)?)?;
    t.set("users", lua.create_function(users)?)?;
    t.set("append", lua.create_function(append)?)?;
    t.set("set", lua.create_function(set)?)?;
    t.set("delete", lua.create_function(delete)?)?;
    t.set("wait", lua.create_function(wait)?)?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_become_microseconds_and_a_whole_second_end_covers_that_second() {
        assert_eq!(micros(1.5, false).unwrap(), 1_500_000);
        assert_eq!(
            micros(1_700_000_000.123456, false).unwrap(),
            1_700_000_000_123_456
        );
        assert_eq!(micros(7.0, true).unwrap(), 7_999_999);
        assert_eq!(micros(f64::INFINITY, false).unwrap(), Micros::MAX);
        assert_eq!(micros(f64::NEG_INFINITY, true).unwrap(), Micros::MIN);
        assert!(micros(f64::NAN, false).is_err());
    }
}
