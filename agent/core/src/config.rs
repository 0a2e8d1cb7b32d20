//! Leaf types of the configuration, shared by every crate's own section: each checks its value
//! while the TOML is parsed, so an error names the line and the field.

use serde::{Deserialize, Deserializer, Serialize};

/// A number in `[0, 1]`.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
#[serde(transparent)]
pub struct Ratio(pub f64);

impl<'de> Deserialize<'de> for Ratio {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if !(0.0..=1.0).contains(&v) {
            return Err(serde::de::Error::custom(format!(
                "{v}: expected a number from 0 to 1"
            )));
        }
        Ok(Ratio(v))
    }
}

/// An integer checked against `[MIN, MAX]` while parsing, so the error points at its line.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Bounded<const MIN: u64, const MAX: u64>(pub u64);

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Bounded<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        if !(MIN..=MAX).contains(&v) {
            return Err(serde::de::Error::custom(format!(
                "{v} is out of range: expected {MIN} to {MAX}"
            )));
        }
        Ok(Bounded(v))
    }
}

/// Power in watts: finite and not negative.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
#[serde(transparent)]
pub struct Watts(pub f64);

impl<'de> Deserialize<'de> for Watts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if !v.is_finite() || v < 0.0 {
            return Err(serde::de::Error::custom(format!(
                "{v} watts: expected a number >= 0"
            )));
        }
        Ok(Watts(v))
    }
}

/// A shell-style glob (`*`, `?`, `[...]`), compiled while parsing.
#[derive(Debug, Clone, Serialize)]
#[serde(into = "String")]
pub struct Glob {
    text: String,
    #[serde(skip)]
    matcher: globset::GlobMatcher,
}

impl Glob {
    pub fn new(text: &str) -> Result<Glob, String> {
        let glob = globset::Glob::new(text).map_err(|e| format!("bad glob {text:?}: {e}"))?;
        Ok(Glob {
            text: text.to_string(),
            matcher: glob.compile_matcher(),
        })
    }
    pub fn is_match(&self, s: &str) -> bool {
        self.matcher.is_match(s)
    }
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl PartialEq for Glob {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl From<Glob> for String {
    fn from(g: Glob) -> String {
        g.text
    }
}

impl<'de> Deserialize<'de> for Glob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Glob::new(&text).map_err(serde::de::Error::custom)
    }
}
