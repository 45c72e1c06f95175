//! How records are kept on disk: one version byte, then the record in postcard (a compact,
//! positional binary serde format). The first release kept JSON (its first byte is `{`); such a
//! record still reads, so a data folder written by it opens and is migrated on the way in
//! ([`super::v1`]).
//!
//! postcard is positional: a record reads only with exactly the type that wrote it (same fields,
//! same order, same enum variants; `#[serde(default)]` does not help a shorter old record). So
//! changing a stored type means a new [`FORMAT`] byte, the old type kept frozen beside it, and a
//! decoder for each format still on disk — as this one keeps reading the first release's JSON. A
//! field is never left out when writing.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::StoreError;

/// The format byte this build writes. (2 was only ever written by development builds before
/// times were kept in binary; it is refused, not misread.)
pub const FORMAT: u8 = 3;

/// The first byte of a record of the first release (JSON).
const JSON: u8 = b'{';

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![FORMAT];
    postcard::to_io(v, &mut out).expect("a record serializes into memory");
    out
}

pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    let corrupt = |message: String| StoreError::Corrupt { tree: what, message };
    match bytes.first() {
        Some(&FORMAT) => postcard::from_bytes(&bytes[1..]).map_err(|e| corrupt(e.to_string())),
        Some(&JSON) => serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string())),
        Some(other) => Err(corrupt(format!("unknown record format {other}"))),
        None => Err(corrupt("empty record".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;
    use chrono::{TimeZone, Utc};

    fn event() -> OutboxEvent {
        OutboxEvent {
            v: RECORD_VERSION,
            event_id: "evt_1".into(),
            partner: "gcash".into(),
            kind: "payment.succeeded".into(),
            payment_id: "pay_1".into(),
            created_at: Utc.with_ymd_and_hms(2026, 11, 30, 1, 2, 3).unwrap(),
            data: serde_json::json!({"amount": {"value": "1.5", "currency": "CNY"}, "n": 1.25}),
            replayed_at: None,
        }
    }

    #[test]
    fn binary_records_round_trip_with_json_values_and_absent_options() {
        let e = event();
        let bytes = encode(&e);
        assert_eq!(bytes[0], FORMAT);
        assert_eq!(decode::<OutboxEvent>("outbox", &bytes).unwrap(), e);
        let replayed = OutboxEvent { replayed_at: Some(e.created_at), ..e };
        assert_eq!(decode::<OutboxEvent>("outbox", &encode(&replayed)).unwrap(), replayed);
    }

    #[test]
    fn first_release_json_records_still_read() {
        // As the first release wrote it: no `replayed_at` (it was skipped when absent).
        let json = serde_json::to_vec(&serde_json::json!({
            "v": 1, "event_id": "evt_1", "partner": "gcash", "kind": "payment.succeeded",
            "payment_id": "pay_1", "created_at": "2026-11-30T01:02:03Z",
            "data": {"amount": {"value": "1.5", "currency": "CNY"}, "n": 1.25}
        }))
        .unwrap();
        assert_eq!(decode::<OutboxEvent>("outbox", &json).unwrap(), event());
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        // 2: a development build's layout, refused rather than misread.
        for bad in [&[][..], &[9, 1, 2][..], &[2, 0, 0][..], &[FORMAT, 0xff][..], b"{not json"] {
            assert!(matches!(
                decode::<OutboxEvent>("outbox", bad),
                Err(StoreError::Corrupt { .. })
            ));
        }
    }
}
