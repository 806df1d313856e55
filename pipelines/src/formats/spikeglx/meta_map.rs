//! The raw `key=value` map of a `.meta`: lookups that accept table keys with or without their
//! `~`, typed reads of optional values, and errors that name the file and key.

use std::collections::HashMap;
use std::str::FromStr;

use super::{MetaError, MAX_CHANNELS};

/// Lookup and error helpers over the raw map.
pub(super) struct Ctx<'a> {
    pub(super) name: &'a str,
    pub(super) values: &'a HashMap<String, String>,
}

pub(super) fn lookup<'m>(values: &'m HashMap<String, String>, key: &str) -> Option<&'m str> {
    let other = match key.strip_prefix('~') {
        Some(bare) => bare.to_string(),
        None => format!("~{key}"),
    };
    values
        .get(key)
        .or_else(|| values.get(&other))
        .map(String::as_str)
}

impl Ctx<'_> {
    pub(super) fn get(&self, key: &str) -> Option<&str> {
        lookup(self.values, key)
    }

    pub(super) fn require(&self, key: &str) -> Result<&str, MetaError> {
        self.get(key).ok_or_else(|| self.missing(key))
    }

    pub(super) fn missing(&self, key: &str) -> MetaError {
        MetaError::Missing {
            file: self.name.into(),
            key: key.into(),
        }
    }

    pub(super) fn invalid(&self, key: &str, value: &str, why: String) -> MetaError {
        MetaError::Invalid {
            file: self.name.into(),
            key: key.into(),
            value: short(value).into_owned(),
            why,
        }
    }

    pub(super) fn inconsistent(&self, why: String) -> MetaError {
        MetaError::Inconsistent {
            file: self.name.into(),
            why,
        }
    }

    /// An optional number; present but unparsable is an error.
    pub(super) fn num<T: FromStr>(&self, key: &str) -> Result<Option<T>, MetaError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .parse::<T>()
                .map(Some)
                .map_err(|_| self.invalid(key, v, "not a number of the expected kind".into())),
        }
    }

    /// An optional finite number.
    pub(super) fn float(&self, key: &str) -> Result<Option<f64>, MetaError> {
        match self.num::<f64>(key)? {
            Some(v) if !v.is_finite() => {
                Err(self.invalid(key, &v.to_string(), "not finite".into()))
            }
            v => Ok(v),
        }
    }

    /// An optional list of `n` channel counts such as `acqApLfSy=384,384,1`.
    pub(super) fn counts<const N: usize>(
        &self,
        key: &str,
    ) -> Result<Option<[usize; N]>, MetaError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let bad = || {
            self.invalid(
                key,
                v,
                format!("expected {N} comma-separated channel counts"),
            )
        };
        let mut out = [0usize; N];
        let mut fields = v.split(',');
        for slot in out.iter_mut() {
            *slot = fields
                .next()
                .and_then(|f| f.trim().parse().ok())
                .filter(|c| *c <= MAX_CHANNELS)
                .ok_or_else(bad)?;
        }
        if fields.next().is_some() {
            return Err(bad());
        }
        Ok(Some(out))
    }
}

/// Shortens long values (tables) for messages.
pub(crate) fn short(s: &str) -> std::borrow::Cow<'_, str> {
    const MAX: usize = 60;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]).into(),
        None => s.into(),
    }
}
