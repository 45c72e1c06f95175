//! The generic acquirer API, version 1.
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `POST /v1/codes/lookup` | [`LookupRequest`] | [`LookupAnswer`] |
//! | `POST /v1/instructions` | [`Instruction`] | [`InstructionAnswer`]; idempotent on `instruction_id` |
//! | `GET /v1/instructions/{id}` | — | [`InstructionAnswer`] (`NOT_FOUND` when never received, `PROCESSING` while undecided) |
//! | `POST /v1/instructions/{id}/reversal` | — | [`InstructionAnswer`] (`REVERSED`) |

use qrbridge_fx::Amount;
use serde::{Deserialize, Serialize};

/// Ask the acquirer who a URL code's merchant is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupRequest {
    pub scheme: String,
    pub code: String,
}

/// A merchant as the acquirer knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupAnswer {
    pub merchant_id: String,
    pub name: Option<String>,
    pub city: Option<String>,
    pub mcc: Option<String>,
    /// Set for order codes: the amount the order is for.
    pub amount: Option<Amount>,
}

/// A payment instruction: pay `amount` (CNY) to the merchant. `instruction_id` is the bridge's
/// payment id and the acquirer's idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instruction {
    pub instruction_id: String,
    pub merchant_id: String,
    pub scheme: String,
    /// The scanned code, for acquirers that settle against it.
    pub code: String,
    pub amount: Amount,
}

/// Where an instruction stands at the acquirer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InstructionStatus {
    Approved,
    Declined,
    Reversed,
    NotFound,
    /// Received, not decided yet.
    Processing,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstructionAnswer {
    pub instruction_id: String,
    pub status: InstructionStatus,
    /// The acquirer's own reference for an approved instruction.
    #[serde(default)]
    pub acquirer_ref: Option<String>,
    /// Why it was declined.
    #[serde(default)]
    pub reason: Option<String>,
}
