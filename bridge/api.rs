//! The partner API's answer shapes (../shared/API.md), built from engine and adapter types.

use qrbridge_adapters::decode::{CodeType, MerchantCode, Scheme, Warning};
use qrbridge_fx::Amount;
use serde::Serialize;

/// `merchant` in API answers: fields the code does not carry are `null`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct MerchantAnswer {
    pub id: Option<String>,
    pub name: Option<String>,
    pub city: Option<String>,
    pub country: Option<String>,
    pub mcc: Option<String>,
}

impl MerchantAnswer {
    pub fn from_code(code: &MerchantCode<'_>) -> Self {
        let m = &code.merchant;
        let own = |s: Option<&str>| s.map(str::to_owned);
        MerchantAnswer {
            id: own(m.id),
            name: own(m.name),
            city: own(m.city),
            country: own(m.country),
            mcc: own(m.mcc),
        }
    }
}

/// The answer of `POST /v1/codes/decode`.
#[derive(Debug, Clone, Serialize)]
pub struct DecodeAnswer {
    pub scheme: Scheme,
    pub code_type: CodeType,
    pub merchant: MerchantAnswer,
    pub amount: Option<Amount>,
    pub acquirer: Option<String>,
    pub warnings: Vec<Warning>,
}

impl DecodeAnswer {
    pub fn new(code: &MerchantCode<'_>, acquirer: Option<&str>) -> Self {
        DecodeAnswer {
            scheme: code.scheme,
            code_type: code.code_type,
            merchant: MerchantAnswer::from_code(code),
            amount: code.amount,
            acquirer: acquirer.map(str::to_owned),
            warnings: code.warnings.clone(),
        }
    }
}

/// The API's error body: `{"error": {"code", "message", "retryable"}}`.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorDetail<'a> {
    pub code: &'a str,
    pub message: String,
    pub retryable: bool,
}
