//! Times in records: RFC 3339 text in human-readable forms (JSON: the API, the first release's
//! records), seconds and nanoseconds since the epoch in binary forms (the store's records), where
//! the text would take 30 bytes for 8 to 12. Use with `#[serde(with = "qrbridge_fx::time")]`, or
//! `qrbridge_fx::time::option` for an `Option`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() {
        t.serialize(s)
    } else {
        (t.timestamp(), t.timestamp_subsec_nanos()).serialize(s)
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    if d.is_human_readable() {
        DateTime::<Utc>::deserialize(d)
    } else {
        let (secs, nanos) = <(i64, u32)>::deserialize(d)?;
        DateTime::from_timestamp(secs, nanos)
            .ok_or_else(|| serde::de::Error::custom("time out of range"))
    }
}

/// The same for an `Option` (use with `#[serde(default, with = "qrbridge_fx::time::option")]`).
pub mod option {
    use super::*;

    #[derive(Serialize, Deserialize)]
    struct Wrap(#[serde(with = "super")] DateTime<Utc>);

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        t.map(Wrap).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct R {
        #[serde(with = "super")]
        at: DateTime<Utc>,
        #[serde(default, with = "super::option")]
        maybe: Option<DateTime<Utc>>,
    }

    #[test]
    fn json_is_rfc3339_and_binary_is_compact_both_exact() {
        let at = DateTime::from_timestamp(1_795_000_000, 123_456_789).unwrap();
        for maybe in [None, Some(at)] {
            let r = R { at, maybe };
            let json = serde_json::to_string(&r).unwrap();
            assert!(json.contains("\"2026-"), "{json}");
            assert_eq!(serde_json::from_str::<R>(&json).unwrap(), r);
            let bin = postcard::to_allocvec(&r).unwrap();
            assert!(bin.len() <= 26, "{} bytes", bin.len());
            assert_eq!(postcard::from_bytes::<R>(&bin).unwrap(), r);
        }
        // JSON without the optional field (as the first release wrote it).
        let old = r#"{"at":"2026-11-18T11:06:40.123456789Z"}"#;
        assert_eq!(serde_json::from_str::<R>(old).unwrap(), R { at, maybe: None });
    }
}
