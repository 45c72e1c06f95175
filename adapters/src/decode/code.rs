//! What a decode returns: the decode answer of the partner API (`scheme`, `code_type`,
//! `merchant`, `amount`, `warnings`) plus what routing needs and the code's raw parts.
//!
//! Values borrow from the scanned text, so a decode allocates little; [`MerchantCode`] serializes
//! to JSON for storage and answers.

use qrbridge_fx::Amount;
use serde::Serialize;

/// The code's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Scheme {
    /// Any EMVCo merchant-presented TLV code (UnionPay QR included).
    Emvco,
    Alipay,
    Wechat,
    /// UnionPay's URL codes (`qr.95516.com`).
    Unionpay,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Emvco => "EMVCO",
            Scheme::Alipay => "ALIPAY",
            Scheme::Wechat => "WECHAT",
            Scheme::Unionpay => "UNIONPAY",
        }
    }

    pub fn parse(s: &str) -> Option<Scheme> {
        [Scheme::Emvco, Scheme::Alipay, Scheme::Wechat, Scheme::Unionpay]
            .into_iter()
            .find(|x| x.as_str() == s)
    }
}

/// A merchant's standing code, or one made for one payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CodeType {
    Static,
    Dynamic,
}

/// Who the merchant is, as far as the code says; `None` where it says nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Merchant<'a> {
    pub id: Option<&'a str>,
    pub name: Option<&'a str>,
    pub city: Option<&'a str>,
    pub country: Option<&'a str>,
    pub mcc: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<&'a str>,
    /// From the language template (64): the name and city in the merchant's own language.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalName<'a>>,
}

/// EMVCo tag 64.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LocalName<'a> {
    pub language: Option<&'a str>,
    pub name: Option<&'a str>,
    pub city: Option<&'a str>,
}

/// Something the code gets wrong without making it unusable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    pub code: WarningCode,
    /// The EMVCo tag concerned, e.g. `"59"` or `"62.08"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    pub message: String,
}

/// Stable warning codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WarningCode {
    /// Payload format indicator `02` (DuitNow) instead of `01`.
    PayloadFormat,
    /// Longer than EMVCo's 512 characters.
    LongPayload,
    /// A mandatory EMVCo field (MCC, name, city, account information…) is absent.
    MissingField,
    /// A field is present with no value.
    EmptyValue,
    /// A name or city past EMVCo's length.
    LongValue,
    /// An amount of zero: the code decodes, quoting refuses it.
    ZeroAmount,
    /// A tag EMVCo reserves for future use, or a sub-tag nobody defined.
    ReservedTag,
    /// A template whose inside is not TLV; kept raw.
    NotTlv,
    /// A value in a form EMVCo does not allow, kept as given.
    OddValue,
    /// White space around the scanned text was removed.
    SurroundingWhitespace,
    /// A URL code of a kind we do not know, passed on for the acquirer's lookup.
    UnknownUrlCode,
    /// The code decodes, but no configured acquirer serves it (said by tools, not the API, which
    /// answers `MERCHANT_NOT_SERVICEABLE`).
    NotServiceable,
}

/// What routing matches on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RouteKey<'a> {
    /// Merchant account templates present (02–51), in code order.
    pub emvco_templates: Vec<u8>,
    /// (template, GUID/AID) of each template 26–51 that has one.
    pub emvco_guids: Vec<(u8, &'a str)>,
    /// URL codes: the host (lower-cased when compared); empty for `wxp://`.
    pub url_host: Option<&'a str>,
    /// URL codes: the path, from `/` up to any `?`.
    pub url_path: Option<&'a str>,
    /// UnionPay institution: the 8 digits of a `qr.95516.com` URL, or tag 15's acquirer IIN.
    pub unionpay_institution: Option<&'a str>,
}

/// One EMVCo data object as found: tag, value, and where it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Field<'a> {
    pub tag: u8,
    pub value: &'a str,
    /// Character offset of the tag's id in the scanned text.
    #[serde(skip)]
    pub offset: usize,
}

/// A merchant account information template (26–51), or a primitive network id (02–25).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Account<'a> {
    pub tag: u8,
    /// Sub-tag 00 of templates 26–51.
    pub guid: Option<&'a str>,
    /// Sub-fields when the template is TLV; empty for primitive ids or a template kept raw.
    pub fields: Vec<Field<'a>>,
    pub raw: &'a str,
}

/// Tag 15: UnionPay's 31 characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnionPayId<'a> {
    pub acquirer_iin: &'a str,
    pub forwarding_iin: &'a str,
    pub merchant_id: &'a str,
}

/// Tags 55–57.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tip<'a> {
    /// `01` the payer is asked, `02` a fixed fee (56), `03` a percentage (57).
    pub indicator: &'a str,
    pub fixed_fee: Option<Amount>,
    pub percentage: Option<&'a str>,
}

/// The EMVCo-specific parts of a code.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EmvcoDetail<'a> {
    pub format_indicator: &'a str,
    /// Tag 53: what the code is priced in, with or without an amount.
    pub currency: Option<qrbridge_fx::Currency>,
    pub accounts: Vec<Account<'a>>,
    pub unionpay: Option<UnionPayId<'a>>,
    pub tip: Option<Tip<'a>>,
    /// Tag 62's sub-fields (bill number, store label, terminal, purpose…).
    pub additional_data: Vec<Field<'a>>,
    /// Tag 62 when its inside is not TLV.
    pub additional_data_raw: Option<&'a str>,
    /// Tags 65–99 as found.
    pub other: Vec<Field<'a>>,
    pub crc: &'a str,
}

/// A decoded code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MerchantCode<'a> {
    pub scheme: Scheme,
    pub code_type: CodeType,
    pub merchant: Merchant<'a>,
    /// What the code asks to be paid, in the code's currency; `None` for codes without one.
    pub amount: Option<Amount>,
    pub warnings: Vec<Warning>,
    #[serde(skip)]
    pub route_key: RouteKey<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub emvco: Option<EmvcoDetail<'a>>,
    /// The URL code's own token (Alipay `fkx…`, WeChat `f2f…` or `pr=`, UnionPay path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url_code: Option<&'a str>,
}

impl MerchantCode<'_> {
    pub fn warn(&mut self, code: WarningCode, tag: Option<&str>, message: impl Into<String>) {
        self.warnings.push(Warning { code, tag: tag.map(str::to_owned), message: message.into() });
    }
}
