//! `/etc/berth/registries.toml`, the image store's registry settings (the agent writes it
//! from user-data's `berth.registries`):
//!
//! ```toml
//! parallel_layers = 3
//! ca_files = ["/etc/berth/ca/corp.pem"]
//! [registry."docker.io"]
//! mirrors = ["mirror.example.com"]
//! [registry."registry.example.com:5000"]
//! insecure = true          # plain HTTP
//! username = "me"
//! password = "secret"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where the store reads it.
pub const CONFIG_PATH: &str = "/etc/berth/registries.toml";

/// The file could not be read, or says something wrong.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {why}")]
pub struct RegistriesError {
    pub path: PathBuf,
    pub why: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub registry: BTreeMap<String, RegistryConfig>,
    #[serde(default)]
    pub ca_files: Vec<PathBuf>,
    #[serde(default = "default_parallel")]
    pub parallel_layers: usize,
    #[serde(default = "default_retries")]
    pub retries: u32,
}

fn default_parallel() -> usize {
    3
}

fn default_retries() -> u32 {
    5
}

impl Default for Config {
    fn default() -> Self {
        Config {
            registry: BTreeMap::new(),
            ca_files: Vec::new(),
            parallel_layers: default_parallel(),
            retries: default_retries(),
        }
    }
}

/// One registry's settings (`[registry."HOST[:PORT]"]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    #[serde(default)]
    pub insecure: bool,
    #[serde(default)]
    pub mirrors: Vec<String>,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl Config {
    /// The file, or the defaults when it does not exist.
    pub fn load(path: &Path) -> Result<Config, RegistriesError> {
        let bad = |why: String| RegistriesError {
            path: path.to_path_buf(),
            why,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => return Err(bad(e.to_string())),
        };
        Config::parse(&text).map_err(bad)
    }

    /// The file's text, checked (the agent checks user-data's `berth.registries` so).
    pub fn parse(text: &str) -> Result<Config, String> {
        let c: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        if c.parallel_layers == 0 {
            return Err("parallel_layers must be at least 1".into());
        }
        Ok(c)
    }

    /// The settings for `host` (the defaults when it has none).
    pub fn for_host(&self, host: &str) -> RegistryConfig {
        self.registry.get(host).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_the_file() {
        let t = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            t.path(),
            "parallel_layers = 2\n[registry.\"a\"]\ninsecur = true\n",
        )
        .unwrap();
        let e = Config::load(t.path()).unwrap_err().to_string();
        assert!(
            e.contains("insecur") && e.contains(&t.path().display().to_string()),
            "{e}"
        );
        std::fs::write(
            t.path(),
            "[registry.\"127.0.0.1:5000\"]\ninsecure = true\nmirrors = [\"m:1\"]\n",
        )
        .unwrap();
        let c = Config::load(t.path()).unwrap();
        assert!(c.for_host("127.0.0.1:5000").insecure);
        assert_eq!(c.parallel_layers, 3);
        assert!(Config::load(Path::new("/nonexistent/registries.toml")).is_ok());
        assert!(Config::parse("parallel_layers = 0").is_err());
    }
}
