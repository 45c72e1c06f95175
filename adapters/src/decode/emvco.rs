//! EMVCo merchant-presented mode (MPM): UnionPay QR and the region's national codes (PromptPay,
//! DuitNow, SGQR/PayNow, QRIS, VietQR, QR Ph, KHQR, Bharat QR, Pix…).
//!
//! The policy (`shared/testdata/qr/README.md`): **reject** a wrong or missing CRC, TLV that does
//! not parse, a duplicate top-level tag, tag 00 not first or 63 not last, a point of initiation
//! other than 11/12, an MCC that is not four digits, an unknown currency number, an amount that is
//! not a decimal or has more decimals than its currency. **Decode with a warning** format
//! indicator 02, payloads past 512 characters, missing MCC / name / city, zero-length values,
//! over-long names and cities, zero amounts, RFU tags, and templates whose inside is not TLV (kept
//! raw).

use qrbridge_fx::{Amount, Currency};

use super::code::*;
use super::error::DecodeError;
use super::tlv;

/// EMVCo's recommended maximum length.
const EMVCO_MAX_CHARS: usize = 512;
const NAME_MAX_CHARS: usize = 25;
const CITY_MAX_CHARS: usize = 15;

/// Two-digit tag text for messages.
fn tag_text(tag: u8) -> String {
    format!("{tag:02}")
}

fn char_len(s: &str) -> usize {
    if s.is_ascii() {
        s.len()
    } else {
        s.chars().count()
    }
}

/// A name-like value, kept whatever its length; past EMVCo's `max` characters it earns a warning.
fn bounded<'a>(code: &mut MerchantCode<'a>, f: &Field<'a>, max: usize, what: &str) -> &'a str {
    if char_len(f.value) > max {
        code.warn(
            WarningCode::LongValue,
            Some(&tag_text(f.tag)),
            format!("{what} past {max} characters"),
        );
    }
    f.value
}

/// Decodes an EMVCo MPM payload of `chars` characters.
pub fn decode(s: &str, chars: usize) -> Result<MerchantCode<'_>, DecodeError> {
    let ascii = s.is_ascii();
    let fields = tlv::parse(s, 0, ascii)?;
    let crc = check_structure(s, &fields)?;

    let mut code = MerchantCode {
        scheme: Scheme::Emvco,
        code_type: CodeType::Static,
        merchant: Merchant::default(),
        amount: None,
        warnings: Vec::new(),
        route_key: RouteKey::default(),
        emvco: None,
        url_code: None,
    };
    let mut detail = EmvcoDetail { crc, ..EmvcoDetail::default() };
    if chars > EMVCO_MAX_CHARS {
        code.warn(
            WarningCode::LongPayload,
            None,
            format!("{chars} characters, past EMVCo's {EMVCO_MAX_CHARS}"),
        );
    }

    let mut currency: Option<Currency> = None;
    let mut amount: Option<&Field<'_>> = None;
    let mut tip: [Option<&Field<'_>>; 3] = [None; 3];
    for f in &fields {
        if f.value.is_empty() && !matches!(f.tag, 0 | 1 | 63) {
            code.warn(WarningCode::EmptyValue, Some(&tag_text(f.tag)), "zero-length value ignored");
            continue;
        }
        match f.tag {
            0 => match f.value {
                "01" => {}
                "02" => code.warn(
                    WarningCode::PayloadFormat,
                    Some("00"),
                    "payload format indicator 02, not 01",
                ),
                other => {
                    return Err(DecodeError::FormatIndicator {
                        offset: f.offset,
                        found: other.into(),
                    })
                }
            },
            1 => match f.value {
                "11" => code.code_type = CodeType::Static,
                "12" => code.code_type = CodeType::Dynamic,
                other => {
                    return Err(DecodeError::PointOfInitiation {
                        offset: f.offset,
                        found: other.into(),
                    })
                }
            },
            2..=51 => account(&mut code, &mut detail, f, ascii),
            52 => {
                if f.value.len() != 4 || !f.value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(DecodeError::Mcc { offset: f.offset, found: f.value.into() });
                }
                code.merchant.mcc = Some(f.value);
            }
            53 => {
                currency = Some(Currency::from_numeric_str(f.value).map_err(|_| {
                    DecodeError::Currency { offset: f.offset, found: f.value.into() }
                })?)
            }
            54 => amount = Some(f),
            55..=57 => tip[usize::from(f.tag - 55)] = Some(f),
            58 => {
                if f.value.len() != 2 || !f.value.bytes().all(|b| b.is_ascii_uppercase()) {
                    code.warn(
                        WarningCode::OddValue,
                        Some("58"),
                        "country code is not two capital letters",
                    );
                }
                code.merchant.country = Some(f.value);
            }
            59 => code.merchant.name = Some(bounded(&mut code, f, NAME_MAX_CHARS, "merchant name")),
            60 => code.merchant.city = Some(bounded(&mut code, f, CITY_MAX_CHARS, "merchant city")),
            61 => code.merchant.postal_code = Some(f.value),
            62 => additional_data(&mut code, &mut detail, f, ascii),
            63 => {}
            64 => language(&mut code, f, ascii),
            65..=79 => {
                code.warn(
                    WarningCode::ReservedTag,
                    Some(&tag_text(f.tag)),
                    "tag reserved for future use; kept",
                );
                detail.other.push(*f);
            }
            _ => detail.other.push(*f),
        }
    }

    if let Some(f) = amount {
        let Some(cur) = currency else { return Err(DecodeError::AmountWithoutCurrency) };
        let a = Amount::from_major_str(cur, f.value).map_err(|e| DecodeError::Amount {
            offset: f.offset,
            found: f.value.into(),
            reason: e.to_string(),
        })?;
        if a.is_zero() {
            code.warn(WarningCode::ZeroAmount, Some("54"), "amount is zero");
        }
        code.amount = Some(a);
    }
    if let Some(ind) = tip[0] {
        detail.tip = Some(tip_of(&mut code, ind, tip[1], tip[2], currency));
    }
    for (present, tag, what) in [
        (!detail.accounts.is_empty(), "02-51", "merchant account information"),
        (code.merchant.mcc.is_some(), "52", "merchant category code"),
        (currency.is_some(), "53", "transaction currency"),
        (code.merchant.country.is_some(), "58", "country code"),
        (code.merchant.name.is_some(), "59", "merchant name"),
        (code.merchant.city.is_some(), "60", "merchant city"),
    ] {
        if !present {
            code.warn(WarningCode::MissingField, Some(tag), format!("no {what}"));
        }
    }

    code.merchant.id = detail
        .unionpay
        .as_ref()
        .map(|u| u.merchant_id)
        .or_else(|| {
            // The merchant's id within its network's template: the first sub-field after the GUID.
            detail
                .accounts
                .iter()
                .find_map(|a| a.fields.iter().find(|f| f.tag != 0).map(|f| f.value))
        })
        .or_else(|| detail.accounts.iter().find(|a| a.tag <= 25).map(|a| a.raw));
    code.route_key.unionpay_institution = detail.unionpay.as_ref().map(|u| u.acquirer_iin);
    detail.currency = currency;
    detail.format_indicator = fields[0].value;
    code.emvco = Some(detail);
    Ok(code)
}

/// 00 first, no duplicate tags, 63 last with a correct CRC. Returns the CRC text.
fn check_structure<'a>(s: &'a str, fields: &[Field<'a>]) -> Result<&'a str, DecodeError> {
    if fields.first().is_none_or(|f| f.tag != 0) {
        return Err(DecodeError::FormatIndicatorNotFirst);
    }
    let mut seen = [false; 100];
    for f in fields {
        let slot = &mut seen[usize::from(f.tag)];
        if *slot {
            return Err(DecodeError::DuplicateTag { offset: f.offset, tag: tag_text(f.tag) });
        }
        *slot = true;
    }
    let last = fields.last().filter(|f| f.tag == 63);
    let Some(last) = last else {
        return Err(match fields.iter().find(|f| f.tag == 63) {
            Some(f) => DecodeError::CrcNotLast { offset: f.offset },
            None => DecodeError::CrcMissing,
        });
    };
    let found = last.value;
    if found.len() != 4 || !found.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DecodeError::CrcMalformed { offset: last.offset, found: found.into() });
    }
    // 63 is last and its value is 4 ASCII characters: everything before them ends with "6304".
    let covered = &s.as_bytes()[..s.len() - 4];
    let expected = tlv::crc16(covered);
    let carried = u16::from_str_radix(found, 16)
        .map_err(|_| DecodeError::CrcMalformed { offset: last.offset, found: found.into() })?;
    if carried != expected {
        return Err(DecodeError::CrcMismatch { expected, found: found.into() });
    }
    Ok(found)
}

/// Sub-fields of a template, or `None` (with a warning) when its inside is not TLV.
fn template<'a>(code: &mut MerchantCode<'a>, f: &Field<'a>, ascii: bool) -> Option<Vec<Field<'a>>> {
    match tlv::parse(f.value, f.offset + 4, ascii || f.value.is_ascii()) {
        Ok(sub) => Some(sub),
        Err(e) => {
            code.warn(
                WarningCode::NotTlv,
                Some(&tag_text(f.tag)),
                format!("template kept raw: {e}"),
            );
            None
        }
    }
}

/// Merchant account information, 02–51.
fn account<'a>(
    code: &mut MerchantCode<'a>,
    detail: &mut EmvcoDetail<'a>,
    f: &Field<'a>,
    ascii: bool,
) {
    code.route_key.emvco_templates.push(f.tag);
    let mut acc = Account { tag: f.tag, guid: None, fields: Vec::new(), raw: f.value };
    if f.tag == 15 {
        let v = f.value;
        if v.len() == 31 && v.is_ascii() {
            detail.unionpay = Some(UnionPayId {
                acquirer_iin: &v[..8],
                forwarding_iin: &v[8..16],
                merchant_id: &v[16..],
            });
        } else {
            code.warn(
                WarningCode::OddValue,
                Some("15"),
                "UnionPay id is not 31 characters; kept raw",
            );
        }
    } else if f.tag >= 26 {
        if let Some(sub) = template(code, f, ascii) {
            acc.guid = sub.iter().find(|s| s.tag == 0).map(|s| s.value);
            match acc.guid {
                Some(g) => code.route_key.emvco_guids.push((f.tag, g)),
                None => code.warn(
                    WarningCode::MissingField,
                    Some(&tag_text(f.tag)),
                    "template has no globally unique id (00)",
                ),
            }
            acc.fields = sub;
        }
    }
    detail.accounts.push(acc);
}

/// Additional data field template, 62.
fn additional_data<'a>(
    code: &mut MerchantCode<'a>,
    detail: &mut EmvcoDetail<'a>,
    f: &Field<'a>,
    ascii: bool,
) {
    match template(code, f, ascii) {
        Some(sub) => {
            for s in &sub {
                if (10..=49).contains(&s.tag) {
                    code.warn(
                        WarningCode::ReservedTag,
                        Some(&format!("62.{:02}", s.tag)),
                        "sub-tag reserved for future use; kept",
                    );
                }
            }
            detail.additional_data = sub;
        }
        None => detail.additional_data_raw = Some(f.value),
    }
}

/// Merchant information — language template, 64.
fn language<'a>(code: &mut MerchantCode<'a>, f: &Field<'a>, ascii: bool) {
    if let Some(sub) = template(code, f, ascii) {
        let get =
            |t: u8| sub.iter().find(|s| s.tag == t).map(|s| s.value).filter(|v| !v.is_empty());
        code.merchant.local = Some(LocalName { language: get(0), name: get(1), city: get(2) });
    }
}

/// Tip or convenience indicator 55, with 56 (fixed fee) or 57 (percentage).
fn tip_of<'a>(
    code: &mut MerchantCode<'a>,
    ind: &Field<'a>,
    fixed: Option<&Field<'a>>,
    pct: Option<&Field<'a>>,
    currency: Option<Currency>,
) -> Tip<'a> {
    let mut tip = Tip { indicator: ind.value, fixed_fee: None, percentage: None };
    match ind.value {
        "01" => {}
        "02" => match (fixed, currency) {
            (Some(f), Some(c)) => match Amount::from_major_str(c, f.value) {
                Ok(a) => tip.fixed_fee = Some(a),
                Err(e) => code.warn(
                    WarningCode::OddValue,
                    Some("56"),
                    format!("convenience fee ignored: {e}"),
                ),
            },
            _ => {
                code.warn(WarningCode::MissingField, Some("56"), "indicator 02 without a fixed fee")
            }
        },
        "03" => match pct {
            Some(p) => tip.percentage = Some(p.value),
            None => code.warn(
                WarningCode::MissingField,
                Some("57"),
                "indicator 03 without a percentage",
            ),
        },
        _ => code.warn(WarningCode::OddValue, Some("55"), "tip indicator is not 01, 02 or 03"),
    }
    tip
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::decode::tlv::{field as t, with_crc};

    #[test]
    fn decodes_the_emvco_sample() {
        let s = "00020101021229300012D156000000000510A93FO3230Q31280012D15600000001030812345678520441115802CN5914BEST TRANSPORT6007BEIJING64200002ZH0104最佳运输0202北京540523.7253031565502016233030412340603***0708A60086670902ME91320016A0112233449988770708123456786304A13A";
        let c = decode(s, s.chars().count()).unwrap();
        assert_eq!(c.code_type, CodeType::Dynamic);
        assert_eq!(c.merchant.name, Some("BEST TRANSPORT"));
        assert_eq!(c.amount.unwrap().minor(), 2372);
        let local = c.merchant.local.unwrap();
        assert_eq!(
            (local.language, local.name, local.city),
            (Some("ZH"), Some("最佳运输"), Some("北京"))
        );
        assert_eq!(c.route_key.emvco_guids, vec![(29, "D15600000000"), (31, "D15600000001")]);
        assert_eq!(c.merchant.id, Some("A93FO3230Q"));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn strict_where_money_is_at_stake() {
        let base = "000201010212153112345678876543211234567890123455204581253031565802CN5903ABC6007BEIJING";
        let ok = with_crc(&format!("{base}54041.50"));
        let c = decode(&ok, ok.len()).unwrap();
        assert_eq!(c.amount.unwrap().minor(), 150);
        let u = c.emvco.unwrap().unionpay.unwrap();
        assert_eq!(
            (u.acquirer_iin, u.forwarding_iin, u.merchant_id),
            ("12345678", "87654321", "123456789012345")
        );
        let err = |s: String| decode(&s, s.chars().count()).unwrap_err();
        assert!(matches!(
            err(with_crc(&format!("{base}54051.505"))),
            DecodeError::Amount { offset, .. } if offset == base.len()
        ));
        assert!(matches!(
            err(with_crc(&base.replace("5204581253", "520458A253"))),
            DecodeError::Mcc { .. }
        ));
        assert!(matches!(
            err(with_crc(&base.replace("5303156", "5303999"))),
            DecodeError::Currency { .. }
        ));
        assert!(matches!(
            err(with_crc(&base.replace("010212", "010213"))),
            DecodeError::PointOfInitiation { .. }
        ));
        assert!(matches!(
            err(with_crc(&base.replace("000201", "000203"))),
            DecodeError::FormatIndicator { .. }
        ));
        assert!(matches!(
            err(with_crc(&format!("{base}5303156"))),
            DecodeError::DuplicateTag { .. }
        ));
        assert!(matches!(
            err(with_crc(&format!("{}54041.50", base.replace("5303156", "")))),
            DecodeError::AmountWithoutCurrency
        ));
        let mut bad = with_crc(base);
        let last = bad.pop().unwrap();
        bad.push(if last == '0' { '1' } else { '0' });
        assert!(matches!(err(bad), DecodeError::CrcMismatch { .. }));
        let lower = with_crc(base).to_lowercase();
        assert!(
            decode(&lower, lower.len()).is_err(),
            "lower-casing the whole payload changes the CRC"
        );
        let mut hex_lower = with_crc(base);
        let crc = hex_lower.split_off(hex_lower.len() - 4).to_lowercase();
        hex_lower.push_str(&crc);
        assert!(decode(&hex_lower, hex_lower.len()).is_ok(), "CRC hex in either case");
        assert!(matches!(err(format!("{base}6304")), DecodeError::Truncated { .. }));
        assert!(matches!(err(format!("{base}6304XXXX")), DecodeError::CrcMalformed { .. }));
        assert!(matches!(err(format!("{base}6303ABC")), DecodeError::CrcMalformed { .. }));
        assert!(matches!(err(base.into()), DecodeError::CrcMissing));
        assert!(matches!(
            err(with_crc(base).replacen("000201", "", 1)),
            DecodeError::FormatIndicatorNotFirst
        ));
        assert!(matches!(
            err(format!("{}610512345", with_crc(base))),
            DecodeError::CrcNotLast { .. }
        ));
        let e = err(with_crc(&format!("{base}5405")));
        assert!(
            matches!(
                e,
                DecodeError::NonDigitId { .. }
                    | DecodeError::NonDigitLength { .. }
                    | DecodeError::Truncated { .. }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn lenient_where_issuers_are_sloppy() {
        let body = [
            t(0, "02"),
            t(1, "11"),
            t(26, &(t(0, "A000000615000101") + &t(1, "12345678"))),
            t(27, "not tlv"),
            t(53, "458"),
            t(65, "99"),
            t(59, ""),
            t(60, "KUALA LUMPUR CITY CENTRE"),
            t(80, "AB"),
            t(62, &(t(1, "B1") + &t(20, "x"))),
            t(64, &t(0, "")),
        ]
        .concat();
        let s = with_crc(&body);
        let c = decode(&s, s.len()).unwrap();
        let codes: Vec<_> = c.warnings.iter().map(|w| w.code).collect();
        for want in [
            WarningCode::PayloadFormat,
            WarningCode::EmptyValue,
            WarningCode::ReservedTag,
            WarningCode::NotTlv,
            WarningCode::MissingField,
            WarningCode::LongValue,
        ] {
            assert!(codes.contains(&want), "no {want:?} in {:?}", c.warnings);
        }
        assert_eq!(c.merchant.name, None);
        assert_eq!(c.merchant.id, Some("12345678"));
        assert_eq!(c.route_key.emvco_templates, vec![26, 27]);
        let missing: Vec<_> =
            c.warnings.iter().filter(|w| w.code == WarningCode::MissingField).collect();
        assert_eq!(missing.len(), 3, "MCC, country, name: {missing:?}");
    }
}
