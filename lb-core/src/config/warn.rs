//! What is valid but unwise in a config: an admin API anyone can drive, TLS
//! probes that verify nothing, a guessable join key, a service without
//! active health checks or with a single backend. `ringlb check` prints
//! these (`--strict` makes them errors) and the start-up logs them. Pure:
//! takes a validated [`Config`] and its text, returns located warnings; runs
//! on the thread loading the config.

use std::fmt;
use std::path::{Path, PathBuf};

use super::locate::{line_col, value_span, PathStep};
use super::{Config, HealthKind};

/// Shortest join key that draws no warning: 16 random characters are out
/// of reach of the join endpoint's guess budget (60 a minute), a word is
/// not.
pub(crate) const MIN_JOIN_KEY_CHARS: usize = 16;

/// A valid setting an operator should think twice about, located in the
/// file where possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// The file (None when parsed from a string without a name).
    pub file: Option<PathBuf>,
    /// 1-based line and column of the setting, if it is written.
    pub line: Option<usize>,
    pub col: Option<usize>,
    /// What the risk is and what to write instead.
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    /// `file:line:col: warning: message`, dropping the parts that are unknown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        super::write_location(f, self.file.as_deref(), self.line, self.col)?;
        write!(f, "warning: {}", self.message)
    }
}

/// The warnings for `config`, loaded from `text` (read from `file`).
pub(super) fn warnings(config: &Config, text: &str, file: Option<&Path>) -> Vec<ConfigWarning> {
    let warn = |path: &[PathStep<'_>], message: String| {
        let (line, col) = match value_span(text, path) {
            Some(span) => {
                let (line, col) = line_col(text.as_bytes(), span.start);
                (Some(line), Some(col))
            }
            None => (None, None),
        };
        ConfigWarning {
            file: file.map(Path::to_path_buf),
            line,
            col,
            message,
        }
    };
    use PathStep::{Index, Key};
    let mut out = Vec::new();
    let global = &config.global;
    if let Some(admin) = global.admin {
        let open_to_all = global.admin_allow.iter().any(|net| net.prefix_len() == 0);
        if !admin.ip().is_loopback() && open_to_all && global.admin_token.is_none() {
            out.push(warn(
                &[Key("global"), Key("admin")],
                format!(
                    "the admin API listens on {admin}, admin_allow lets every address in and \
                     there is no admin_token: anyone who reaches this port can drain, disable \
                     and re-weight backends and reload the config. Set admin_token, narrow \
                     admin_allow to your management network, or listen on 127.0.0.1"
                ),
            ));
        }
    }
    if let Some(key) = &global.join_key {
        let chars = key.chars().count();
        if chars < MIN_JOIN_KEY_CHARS {
            let at = if value_span(text, &[Key("global"), Key("join_key")]).is_some() {
                "join_key"
            } else {
                "join_key_file"
            };
            out.push(warn(
                &[Key("global"), Key(at)],
                format!(
                    "the join key is {chars} characters long: use at least {MIN_JOIN_KEY_CHARS} \
                     random ones (e.g. `openssl rand -hex 16`); a short key can be guessed"
                ),
            ));
        }
    }
    for (i, service) in config.services.iter().enumerate() {
        let name = &service.name;
        let health = &service.health;
        if health.kind == HealthKind::Https && health.insecure_skip_verify {
            out.push(warn(
                &[
                    Key("service"),
                    Index(i),
                    Key("health"),
                    Key("insecure_skip_verify"),
                ],
                format!(
                    "service {name}: the backends' certificates are not verified \
                     (insecure_skip_verify = true), so anyone on the path can answer the \
                     health checks; set ca_file to the CA that signed them instead"
                ),
            ));
        }
        if health.kind == HealthKind::None {
            out.push(warn(
                &[Key("service"), Index(i), Key("health"), Key("kind")],
                format!(
                    "service {name} has no active health check (kind = \"none\"): a backend \
                     that is down keeps getting clients until connects to it fail; use \
                     kind = \"http\" (or \"tcp\" for backends without HTTP)"
                ),
            ));
        }
        if service.backends.len() == 1 && global.join_key.is_none() {
            out.push(warn(
                &[Key("service"), Index(i), Key("backend")],
                format!(
                    "service {name} has a single backend: when it is down its clients have \
                     nowhere to go; add another [[service.backend]] (or set a join_key so \
                     that nodes can join)"
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    const QUIET: &str = "[global]\nadmin = \"127.0.0.1:9090\"\n\n[[service]]\nname = \"web\"\n\
        listen = [\"127.0.0.1:8080\"]\n\n[service.health]\nkind = \"http\"\n\n\
        [[service.backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n\n\
        [[service.backend]]\nname = \"b\"\naddress = \"127.0.0.1:2\"\n";

    fn of(text: &str) -> Vec<String> {
        let file = Path::new("ringlb.toml");
        let config = Config::parse(text, Some(file)).unwrap();
        warnings(&config, text, Some(file))
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_careful_config_draws_none() {
        assert_eq!(of(QUIET), Vec::<String>::new());
    }

    #[test]
    fn an_admin_api_open_to_all_without_a_token_is_pointed_at() {
        let open = QUIET.replace(
            "admin = \"127.0.0.1:9090\"",
            "admin = \"0.0.0.0:9090\"\nadmin_allow = [\"0.0.0.0/0\", \"::/0\"]",
        );
        let got = of(&open);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("ringlb.toml:2:9: warning: the admin API listens on 0.0.0.0:9090"),
            "{got:?}"
        );
        assert!(got[0].contains("Set admin_token"), "{got:?}");
        // A token, a narrower allow list or loopback each make it fine.
        let token = open.replace(
            "[global]\n",
            "[global]\nadmin_token = \"s3cret-s3cret-s3cret\"\n",
        );
        assert_eq!(of(&token), Vec::<String>::new());
        let narrow = open.replace("[\"0.0.0.0/0\", \"::/0\"]", "[\"10.0.0.0/8\"]");
        assert_eq!(of(&narrow), Vec::<String>::new());
    }

    #[test]
    fn unverified_probes_no_probes_and_one_backend_are_pointed_at() {
        let tls = QUIET.replace(
            "kind = \"http\"",
            "kind = \"https\"\ninsecure_skip_verify = true",
        );
        let got = of(&tls);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("ringlb.toml:10:24: warning: service web: the backends' certificates are not verified"),
            "{got:?}"
        );
        let none = QUIET.replace("kind = \"http\"", "kind = \"none\"");
        let got = of(&none);
        assert!(
            got.len() == 1
                && got[0].starts_with(
                    "ringlb.toml:9:8: warning: service web has no active health check"
                ),
            "{got:?}"
        );
        let single = QUIET.replace(
            "\n[[service.backend]]\nname = \"b\"\naddress = \"127.0.0.1:2\"\n",
            "",
        );
        let got = of(&single);
        assert!(
            got.len() == 1 && got[0].contains("service web has a single backend"),
            "{got:?}"
        );
    }

    #[test]
    fn a_short_join_key_is_pointed_at() {
        let short = QUIET.replace("[global]\n", "[global]\njoin_key = \"guessable\"\n");
        let got = of(&short);
        assert_eq!(
            got,
            [
                "ringlb.toml:2:12: warning: the join key is 9 characters long: use at least 16 \
              random ones (e.g. `openssl rand -hex 16`); a short key can be guessed"
            ]
        );
        let long = QUIET.replace(
            "[global]\n",
            "[global]\njoin_key = \"3f9a1c0d7e2b4a6f8c1d\"\n",
        );
        assert_eq!(of(&long), Vec::<String>::new());
    }
}
