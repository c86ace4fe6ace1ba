//! The entry points from a command line: [`Config::from_args`] (what `main` calls with
//! clap's matches: the options layered, then validated), [`Config::from_arg_list`] (the
//! same from a plain argument list, for tests), and [`fold_repeated_flag`]
//! (a flag given several times, such as `--webhook-url`, becomes one list).
//!
//! Runs on: the main thread, once at start-up.

use clap::{ArgMatches, FromArgMatches};

use super::options::{Config, ConfigArgs};
use crate::error::{Error, Result};

impl Config {
    /// Builds the configuration: defaults < file < environment < flags, then validated.
    ///
    /// # Errors
    /// [`Error::Config`] naming the file or option that is wrong.
    pub fn from_args(args: &ConfigArgs, matches: &ArgMatches) -> Result<Config> {
        let cfg = Config::layered(args, matches)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses options from an argument list, as `main` does from its own (used by tests).
    ///
    /// # Errors
    /// Clap's usage error as [`Error::Config`], or a validation error.
    pub fn from_arg_list<I, T>(args: I) -> Result<Config>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cmd = <ConfigArgs as clap::Args>::augment_args(clap::Command::new("corecast"));
        let matches = cmd.try_get_matches_from(args).map_err(|e| Error::Config(e.to_string()))?;
        let args =
            ConfigArgs::from_arg_matches(&matches).map_err(|e| Error::Config(e.to_string()))?;
        Config::from_args(&args, &matches)
    }
}

/// Folds repeated `--<flag> V` / `--<flag>=V` arguments into one `--<flag> V1,V2` (the
/// options parser keeps only the last occurrence of a flag).
pub fn fold_repeated_flag(args: Vec<String>, flag: &str) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut values = Vec::new();
    let mut first_at = None;
    let mut it = args.into_iter();
    let eq = format!("{flag}=");
    while let Some(arg) = it.next() {
        if arg == flag {
            first_at.get_or_insert(out.len());
            if let Some(v) = it.next() {
                values.push(v);
            }
        } else if let Some(v) = arg.strip_prefix(&eq) {
            first_at.get_or_insert(out.len());
            values.push(v.to_owned());
        } else {
            out.push(arg);
        }
    }
    if let Some(at) = first_at {
        out.insert(at, values.join(","));
        out.insert(at, flag.to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_webhook_urls_are_folded_into_one_list() {
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let folded = fold_repeated_flag(
            args(&[
                "corecast",
                "--webhook-url",
                "http://a/x",
                "--shards",
                "1",
                "--webhook-url=http://b/y",
            ]),
            "--webhook-url",
        );
        assert_eq!(
            folded,
            args(&["corecast", "--webhook-url", "http://a/x,http://b/y", "--shards", "1"])
        );
        let untouched = args(&["corecast", "--shards", "1"]);
        assert_eq!(fold_repeated_flag(untouched.clone(), "--webhook-url"), untouched);
    }
}
