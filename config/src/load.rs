//! Reading a configuration: TOML text → [`Config`], then [`crate::validate`].

use std::fmt;
use std::path::{Path, PathBuf};

use crate::model::Config;

/// One thing wrong with a configuration, at a key path (`partners[2].wallet_currencies[0]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem { path: path.into(), message: message.into() }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

/// Parses and validates `text`; relative file paths in it are taken from `base_dir`.
pub fn from_str(text: &str, base_dir: &Path) -> Result<Config, ConfigError> {
    let de = toml::Deserializer::parse(text)
        .map_err(|e| ConfigError::Invalid(vec![Problem::new("", e.message().trim())]))?;
    let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let message = e.inner().message().trim().to_owned();
        ConfigError::Invalid(vec![Problem::new(path, message)])
    })?;
    resolve_paths(&mut config, base_dir);
    let problems = crate::validate::check(&config);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

/// Reads, parses and validates the file at `path`.
pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Io { path: path.to_owned(), source })?;
    let base = path.parent().unwrap_or(Path::new("."));
    from_str(&text, base)
}

fn resolve_paths(c: &mut Config, base: &Path) {
    let fix = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    };
    fix(&mut c.tls.server_cert);
    fix(&mut c.tls.server_key);
    fix(&mut c.tls.client_cert);
    fix(&mut c.tls.client_key);
    fix(&mut c.tls.admin_ca);
    c.tls.crls.iter_mut().for_each(fix);
    fix(&mut c.storage.path);
    c.partners.iter_mut().for_each(|p| fix(&mut p.ca));
    c.partners.iter_mut().filter_map(|p| p.webhook_ca.as_mut()).for_each(fix);
    c.acquirers.iter_mut().for_each(|a| fix(&mut a.ca));
    let b = &mut c.risk.blocklists;
    [&mut b.merchants, &mut b.mccs, &mut b.acquirers].into_iter().flatten().for_each(fix);
}
