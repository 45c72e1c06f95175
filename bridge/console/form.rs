//! Form bodies: `application/x-www-form-urlencoded` (every form), and `multipart/form-data` (the
//! acquirer file's upload, whose other fields are plain text).

use std::collections::HashMap;

use bytes::Bytes;
use http::StatusCode;

use crate::error::ApiError;
use crate::http::{read_body, Req};

/// Most fields (and files) one form may hold.
const FIELDS_MAX: usize = 64;

/// A form as sent: text fields by name (a name sent twice keeps its last value) and files.
#[derive(Debug, Default)]
pub struct Fields {
    text: HashMap<String, String>,
    files: HashMap<String, Bytes>,
}

impl Fields {
    /// A text field, when sent.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.text.get(name).map(String::as_str)
    }

    /// A text field, trimmed; none when absent or blank.
    pub fn given(&self, name: &str) -> Option<&str> {
        self.text(name).map(str::trim).filter(|t| !t.is_empty())
    }

    /// Whether a checkbox was ticked.
    pub fn ticked(&self, name: &str) -> bool {
        self.given(name).is_some()
    }

    /// A file field's bytes, when sent.
    pub fn file(&self, name: &str) -> Option<&Bytes> {
        self.files.get(name)
    }
}

/// Why a form could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FormError {
    #[error("{0}")]
    Body(ApiError),
    #[error("the form is sent as {0:?}, not as a form")]
    Kind(String),
    #[error("the form is malformed: {0}")]
    Malformed(&'static str),
    #[error("the form has more than {FIELDS_MAX} fields")]
    TooMany,
}

impl FormError {
    pub fn status(&self) -> StatusCode {
        match self {
            FormError::Body(e) => e.parts().1,
            FormError::Kind(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            FormError::Malformed(_) | FormError::TooMany => StatusCode::BAD_REQUEST,
        }
    }
}

/// Reads the form of `req`, at most `max` bytes.
pub async fn read(req: Req, max: u64) -> Result<Fields, FormError> {
    let kind = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = read_body(req, max).await.map_err(FormError::Body)?;
    parse(&kind, &body)
}

/// A form body of content type `kind`.
pub fn parse(kind: &str, body: &Bytes) -> Result<Fields, FormError> {
    let essence = kind.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match essence.as_str() {
        "application/x-www-form-urlencoded" => {
            let mut f = Fields::default();
            for (k, v) in form_urlencoded::parse(body) {
                f.text.insert(k.into_owned(), v.into_owned());
                if f.text.len() > FIELDS_MAX {
                    return Err(FormError::TooMany);
                }
            }
            Ok(f)
        }
        "multipart/form-data" => {
            let boundary = kind
                .split(';')
                .skip(1)
                .filter_map(|p| p.trim().split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
                .map(|(_, v)| v.trim().trim_matches('"').to_owned())
                .filter(|b| (1..=70).contains(&b.len()))
                .ok_or(FormError::Malformed("no boundary"))?;
            multipart(body, &boundary)
        }
        _ => Err(FormError::Kind(essence)),
    }
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|i| i + from)
}

/// A `multipart/form-data` body (RFC 7578): parts between `--boundary` lines, each with its
/// headers, a blank line and its content.
fn multipart(body: &Bytes, boundary: &str) -> Result<Fields, FormError> {
    let delimiter = format!("--{boundary}");
    let next = format!("\r\n--{boundary}");
    let mut at = find(body, delimiter.as_bytes(), 0).ok_or(FormError::Malformed("no part"))?
        + delimiter.len();
    let mut f = Fields::default();
    loop {
        let rest = body.get(at..).ok_or(FormError::Malformed("cut short"))?;
        if rest.starts_with(b"--") {
            return Ok(f);
        }
        if !rest.starts_with(b"\r\n") {
            return Err(FormError::Malformed("a boundary line goes on"));
        }
        let head_start = at + 2;
        let head_end =
            find(body, b"\r\n\r\n", head_start).ok_or(FormError::Malformed("a part's headers"))?;
        let content_start = head_end + 4;
        let content_end = find(body, next.as_bytes(), head_start)
            .filter(|&e| e >= head_end)
            .ok_or(FormError::Malformed("a part does not end"))?;
        let content_end = content_end.max(content_start);
        let head = std::str::from_utf8(&body[head_start..head_end])
            .map_err(|_| FormError::Malformed("a part's headers are not text"))?;
        let (name, file) = disposition(head)?;
        let content = body.slice(content_start..content_end);
        if file {
            f.files.insert(name, content);
        } else {
            let text = String::from_utf8(content.to_vec())
                .map_err(|_| FormError::Malformed("a text field is not UTF-8"))?;
            f.text.insert(name, text);
        }
        if f.text.len() + f.files.len() > FIELDS_MAX {
            return Err(FormError::TooMany);
        }
        at = content_end + next.len();
    }
}

/// A part's field name, and whether it is a file (its `Content-Disposition` names a filename).
fn disposition(head: &str) -> Result<(String, bool), FormError> {
    let line = head
        .split("\r\n")
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case("content-disposition").then_some(v)
        })
        .ok_or(FormError::Malformed("a part has no Content-Disposition"))?;
    let mut name = None;
    let mut file = false;
    for param in line.split(';').skip(1) {
        let Some((k, v)) = param.trim().split_once('=') else { continue };
        let v = v.trim().trim_matches('"');
        match k.trim().to_ascii_lowercase().as_str() {
            "name" => name = Some(v.to_owned()),
            "filename" => file = true,
            _ => {}
        }
    }
    Ok((name.ok_or(FormError::Malformed("a part has no name"))?, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_encoded_forms_read_as_sent() {
        let f = parse(
            "application/x-www-form-urlencoded",
            &Bytes::from_static(b"csrf=1.ab&bps=12.5&pair=CNY%2FPHP&note=a+b&empty="),
        )
        .unwrap();
        assert_eq!(f.text("pair"), Some("CNY/PHP"));
        assert_eq!(f.text("note"), Some("a b"));
        assert_eq!(f.given("empty"), None);
        assert!(!f.ticked("force"));
        assert!(matches!(parse("application/json", &Bytes::new()), Err(FormError::Kind(_))));
    }

    #[test]
    fn a_file_and_its_fields_read_from_multipart() {
        let body = "--XyZ\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n1.ab\r\n\
                    --XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.csv\"\r\n\
                    Content-Type: text/csv\r\n\r\ninstruction_id,amount\r\npay_1,1.00\r\n\r\n\
                    --XyZ\r\nContent-Disposition: form-data; name=\"empty\"; filename=\"\"\r\n\r\n\r\n\
                    --XyZ--\r\n";
        let f = parse("multipart/form-data; boundary=XyZ", &Bytes::from(body)).unwrap();
        assert_eq!(f.text("csrf"), Some("1.ab"));
        assert_eq!(
            f.file("file").map(|b| b.as_ref()),
            Some(&b"instruction_id,amount\r\npay_1,1.00\r\n"[..])
        );
        assert_eq!(f.file("empty").map(|b| b.len()), Some(0));
        for bad in [
            "",
            "--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nno end",
            "--XyZ\r\nno headers end",
            "--XyZ\r\nContent-Type: x\r\n\r\nv\r\n--XyZ--",
        ] {
            assert!(
                parse("multipart/form-data; boundary=XyZ", &Bytes::from(bad)).is_err(),
                "{bad:?}"
            );
        }
        assert!(parse("multipart/form-data", &Bytes::from(body)).is_err(), "no boundary");
    }
}
