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
//!
//! The formats:
//!
//! | byte | written by | read as |
//! |---|---|---|
//! | `{` | the first release (JSON) | the current types; fields added since take their serde defaults |
//! | 2 | development builds only | refused, never misread |
//! | 3 | builds before price transparency | the current types, except a quote and a payment: their format-3 types ([`format3`]) brought up to date |
//! | 4 | this build | the current types |
//!
//! Format 4 added a quote's rate source (`Quote::mid_source`) and a payment's price reference
//! (`PaymentRecord::reference`). A record written before either was kept does not guess it: a
//! quote reads with the source `unknown` (`qrbridge_fx::quote::UNKNOWN_SOURCE`; its mid and the
//! mid's time were always kept), a payment with no reference (partners see `null`). Every other
//! record is laid out alike in formats 3 and 4.
//!
//! A backup's manifest names the format of the build that took it
//! (`super::backup::Manifest::record_format`): a build restores formats up to its own, so a
//! format-4 backup is refused by a format-3 build rather than misread by it.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::StoreError;

/// The format byte this build writes. (2 was only ever written by development builds before
/// times were kept in binary; it is refused, not misread.)
pub const FORMAT: u8 = 4;

/// The format before quotes kept their rate's source and payments their price reference.
const FORMAT_3: u8 = 3;

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
        Some(&FORMAT_3) => format3::decode(&bytes[1..]).map_err(|e| corrupt(e.to_string())),
        Some(&JSON) => serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string())),
        Some(other) => Err(corrupt(format!("unknown record format {other}"))),
        None => Err(corrupt("empty record".into())),
    }
}

/// Format 3: the quote and payment records as the builds before format 4 wrote them, frozen.
/// They reuse the current types of their fields: those are laid out as they were in format 3 (a
/// change to any of them is a new format, which must freeze a copy of it here).
mod format3 {
    use chrono::{DateTime, Utc};
    use qrbridge_fx::{Amount, Bps, Decimal, Pair};
    use serde::de::DeserializeOwned;
    use serde::{Deserialize, Serialize};

    use crate::model::{self, CodeRef, Failure, MerchantAnswer, PaymentState, RateAnswer};

    /// Reads a format-3 record as `T`. `decode` is generic over every record type (so are its
    /// callers in both stores), so the two types whose layout changed are told apart by their
    /// type's name; each is read with its frozen type, brought up to date, and handed over
    /// through its current layout (a copy, paid only by records older than format 4). Every
    /// other type reads as it is.
    pub(super) fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, postcard::Error> {
        let is = |name: &str| std::any::type_name::<T>() == name;
        if is(std::any::type_name::<model::QuoteRecord>()) {
            let old: QuoteRecord = postcard::from_bytes(body)?;
            return relaid(&old.current());
        }
        if is(std::any::type_name::<model::PaymentRecord>()) {
            let old: PaymentRecord = postcard::from_bytes(body)?;
            return relaid(&old.current());
        }
        postcard::from_bytes(body)
    }

    /// `record` read back as `T` (the type `record` is, by [`decode`]'s test).
    fn relaid<R: Serialize, T: DeserializeOwned>(record: &R) -> Result<T, postcard::Error> {
        postcard::from_bytes(&postcard::to_allocvec(record)?)
    }

    /// `qrbridge_fx::Quote` without `mid_source`.
    #[derive(Deserialize)]
    pub(super) struct Quote {
        pub pair: Pair,
        pub mid: Decimal,
        pub mid_legs: Vec<Pair>,
        #[serde(with = "qrbridge_fx::time")]
        pub mid_as_of: DateTime<Utc>,
        pub spread_bps: Bps,
        pub price: Decimal,
        pub pay: Amount,
        pub wallet: Amount,
        pub wallet_at_mid: Amount,
        pub spread_amount: Amount,
        #[serde(with = "qrbridge_fx::time")]
        pub created_at: DateTime<Utc>,
        #[serde(with = "qrbridge_fx::time")]
        pub expires_at: DateTime<Utc>,
    }

    /// `model::QuoteRecord` of format 3: its quote has no `mid_source`.
    #[derive(Deserialize)]
    pub(super) struct QuoteRecord {
        pub v: u32,
        pub quote_id: String,
        pub partner: String,
        pub code: CodeRef,
        pub quote: Quote,
    }

    impl QuoteRecord {
        /// The source was not kept: `unknown`, not guessed.
        pub(super) fn current(self) -> model::QuoteRecord {
            let q = self.quote;
            model::QuoteRecord {
                v: self.v,
                quote_id: self.quote_id,
                partner: self.partner,
                code: self.code,
                quote: qrbridge_fx::Quote {
                    pair: q.pair,
                    mid: q.mid,
                    mid_legs: q.mid_legs,
                    mid_source: qrbridge_fx::quote::UNKNOWN_SOURCE.to_owned(),
                    mid_as_of: q.mid_as_of,
                    spread_bps: q.spread_bps,
                    price: q.price,
                    pay: q.pay,
                    wallet: q.wallet,
                    wallet_at_mid: q.wallet_at_mid,
                    spread_amount: q.spread_amount,
                    created_at: q.created_at,
                    expires_at: q.expires_at,
                },
            }
        }
    }

    /// `model::PaymentRecord` of format 3: no `reference`.
    #[derive(Deserialize)]
    pub(super) struct PaymentRecord {
        pub v: u32,
        pub payment_id: String,
        pub partner: String,
        pub request_id: String,
        pub request_hash: String,
        pub quote_id: String,
        pub payer_id: String,
        pub state: PaymentState,
        pub failure: Option<Failure>,
        pub pay: Amount,
        pub wallet: Amount,
        pub wallet_at_mid: Amount,
        pub spread: Amount,
        pub rate: RateAnswer,
        pub merchant: MerchantAnswer,
        pub acquirer: String,
        pub acquirer_ref: Option<String>,
        pub booked: bool,
        pub refunded_cny: Amount,
        pub refunded_wallet: Amount,
        pub late_approvals: u32,
        pub order: Option<String>,
        pub acquirer_reason: Option<String>,
        pub cancel_refusal: Option<Failure>,
        pub reversal_refused: bool,
        #[serde(with = "qrbridge_fx::time")]
        pub created_at: DateTime<Utc>,
        #[serde(with = "qrbridge_fx::time")]
        pub updated_at: DateTime<Utc>,
        pub rev: u64,
    }

    impl PaymentRecord {
        /// The reference was not kept: none (its quote kept the mid, not the source).
        pub(super) fn current(self) -> model::PaymentRecord {
            model::PaymentRecord {
                v: self.v,
                payment_id: self.payment_id,
                partner: self.partner,
                request_id: self.request_id,
                request_hash: self.request_hash,
                quote_id: self.quote_id,
                payer_id: self.payer_id,
                state: self.state,
                failure: self.failure,
                pay: self.pay,
                wallet: self.wallet,
                wallet_at_mid: self.wallet_at_mid,
                spread: self.spread,
                rate: self.rate,
                reference: None,
                merchant: self.merchant,
                acquirer: self.acquirer,
                acquirer_ref: self.acquirer_ref,
                booked: self.booked,
                refunded_cny: self.refunded_cny,
                refunded_wallet: self.refunded_wallet,
                late_approvals: self.late_approvals,
                order: self.order,
                acquirer_reason: self.acquirer_reason,
                cancel_refusal: self.cancel_refusal,
                reversal_refused: self.reversal_refused,
                created_at: self.created_at,
                updated_at: self.updated_at,
                rev: self.rev,
            }
        }
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

    /// A quote and a payment as the last format-3 build stored them, made by that build's own
    /// code (commit 2186f73: `Quote::price`, `PaymentRecord::pending`, then its format byte and
    /// postcard): a cross quote CNY/PHP over USD, and a payment of it with most options set.
    const QUOTE_3: &str = concat!(
        "03010b71756f5f666f726d6174330c706172746e65722d64656d6f05454d56434f0653544154494310303030",
        "323031303130323131303030300773616e64626f780f353030303334343533313130303031010f3530303033",
        "34343533313130303031011348414e44414e204e4f4f444c4520484f555345000102434e0003434e59035048",
        "500d382e31333230323234373139310203434e59035553440355534403504850daabe6b00d8084b8d9010235",
        "300a382e313732363832353903434e5904323337320350485005313933383603504850053139323930035048",
        "5002393696ace6b00d8084b8d90186aee6b00d8084b8d901",
    );
    const PAYMENT_3: &str = concat!(
        "03010b7061795f666f726d6174330c706172746e65722d64656d6f0b7265712d666f726d6174334061616161",
        "6161616161616161616161616161616161616161616161616161616161616161616161616161616161616161",
        "616161616161616161616161616161610b71756f5f666f726d6174330770617965722d31020003434e590432",
        "33373203504850053139333836035048500531393239300350485002393607434e592f5048500a382e313732",
        "3638323539010f353030303334343533313130303031011348414e44414e204e4f4f444c4520484f55534500",
        "0102434e000773616e64626f7801054143512d310103434e5901300350485001300101406262626262626262",
        "6262626262626262626262626262626262626262626262626262626262626262626262626262626262626262",
        "626262626262626262626262000110524556455253414c5f52454655534544026e6f0098ace6b00d8084b8d9",
        "019aace6b00d8084b8d90101",
    );
    /// The same two as that build wrote them in JSON: without the fields format 4 added, so they
    /// read with those fields' defaults, which is what the format-3 records must read as.
    const QUOTE_3_JSON: &str = r#"{"v":1,"quote_id":"quo_format3","partner":"partner-demo","code":{"scheme":"EMVCO","code_type":"STATIC","text":"0002010102110000","acquirer":"sandbox","merchant_id":"500034453110001","merchant":{"id":"500034453110001","name":"HANDAN NOODLE HOUSE","city":null,"country":"CN","mcc":null}},"quote":{"pair":{"base":"CNY","quote":"PHP"},"mid":"8.13202247191","mid_legs":[{"base":"CNY","quote":"USD"},{"base":"USD","quote":"PHP"}],"mid_as_of":"2026-11-30T01:01:33.456Z","spread_bps":"50","price":"8.17268259","pay":{"currency":"CNY","value":"2372"},"wallet":{"currency":"PHP","value":"19386"},"wallet_at_mid":{"currency":"PHP","value":"19290"},"spread_amount":{"currency":"PHP","value":"96"},"created_at":"2026-11-30T01:02:03.456Z","expires_at":"2026-11-30T01:04:03.456Z"}}"#;
    const PAYMENT_3_JSON: &str = r#"{"v":1,"payment_id":"pay_format3","partner":"partner-demo","request_id":"req-format3","request_hash":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","quote_id":"quo_format3","payer_id":"payer-1","state":"SUCCEEDED","failure":null,"pay":{"currency":"CNY","value":"2372"},"wallet":{"currency":"PHP","value":"19386"},"wallet_at_mid":{"currency":"PHP","value":"19290"},"spread":{"currency":"PHP","value":"96"},"rate":{"pair":"CNY/PHP","price":"8.17268259"},"merchant":{"id":"500034453110001","name":"HANDAN NOODLE HOUSE","city":null,"country":"CN","mcc":null},"acquirer":"sandbox","acquirer_ref":"ACQ-1","booked":true,"refunded_cny":{"currency":"CNY","value":"0"},"refunded_wallet":{"currency":"PHP","value":"0"},"late_approvals":1,"order":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","acquirer_reason":null,"cancel_refusal":{"code":"REVERSAL_REFUSED","message":"no"},"reversal_refused":false,"created_at":"2026-11-30T01:02:04.456Z","updated_at":"2026-11-30T01:02:05.456Z","rev":1}"#;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn format_3_quotes_and_payments_read_without_a_source_or_reference() {
        let (q3, p3) = (unhex(QUOTE_3), unhex(PAYMENT_3));
        assert_eq!((q3[0], p3[0]), (3, 3));
        let q: QuoteRecord = decode("quotes", &q3).unwrap();
        let want: QuoteRecord = serde_json::from_str(QUOTE_3_JSON).unwrap();
        assert_eq!(q, want);
        assert_eq!(q.quote.mid_source, "unknown");
        assert_eq!(q.quote.mid.to_string(), "8.13202247191");
        assert_eq!(q.quote.price.to_string(), "8.17268259");
        // The markup needs only what format 3 kept.
        assert_eq!(q.quote.markup_bps().to_string(), "50.01");
        let p: PaymentRecord = decode("payments", &p3).unwrap();
        let want: PaymentRecord = serde_json::from_str(PAYMENT_3_JSON).unwrap();
        assert_eq!(p, want);
        assert_eq!((p.reference.as_ref(), p.markup_bps()), (None, None));
        assert_eq!(p.cancel_refusal.as_ref().map(|f| f.code.as_str()), Some("REVERSAL_REFUSED"));
        // Written again, they are format 4 and read back the same.
        for (bytes, format) in [(encode(&q), FORMAT), (encode(&p), FORMAT)] {
            assert_eq!(bytes[0], format);
        }
        assert_eq!(decode::<QuoteRecord>("quotes", &encode(&q)).unwrap(), q);
        assert_eq!(decode::<PaymentRecord>("payments", &encode(&p)).unwrap(), p);
        // A format-3 record cut short is corrupt, not misread.
        let cut_quote = decode::<QuoteRecord>("quotes", &q3[..q3.len() - 1]);
        assert!(matches!(cut_quote, Err(StoreError::Corrupt { .. })), "{cut_quote:?}");
        let cut_payment = decode::<PaymentRecord>("payments", &p3[..p3.len() - 1]);
        assert!(matches!(cut_payment, Err(StoreError::Corrupt { .. })), "{cut_payment:?}");
    }

    #[test]
    fn format_4_keeps_the_source_and_the_reference() {
        let mut q: QuoteRecord = serde_json::from_str(QUOTE_3_JSON).unwrap();
        q.quote.mid_source = "builtin+builtin".into();
        let back: QuoteRecord = decode("quotes", &encode(&q)).unwrap();
        assert_eq!(back, q);
        let p = PaymentRecord::pending(
            &q,
            "req-4",
            &"a".repeat(64),
            "payer-1",
            None,
            q.quote.created_at,
        );
        let reference = p.reference.clone().expect("a new payment keeps its reference");
        assert_eq!(
            (reference.mid, reference.source.as_str(), reference.as_of),
            (q.quote.mid, "builtin+builtin", q.quote.mid_as_of)
        );
        assert_eq!(p.markup_bps(), Some(q.quote.markup_bps()));
        assert_eq!(decode::<PaymentRecord>("payments", &encode(&p)).unwrap(), p);
    }

    #[test]
    fn every_other_format_3_record_reads_as_it_is() {
        let e = event();
        let mut bytes = encode(&e);
        bytes[0] = 3;
        assert_eq!(decode::<OutboxEvent>("outbox", &bytes).unwrap(), e);
        let totals = vec![("fx".to_owned(), -5i128)];
        let mut bytes = encode(&totals);
        bytes[0] = 3;
        assert_eq!(decode::<Vec<(String, i128)>>("totals", &bytes).unwrap(), totals);
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
