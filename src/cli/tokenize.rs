//! `saeclip tokenize`: print the CLIP token ids of one or more texts.

use std::io::Write;

use anyhow::{bail, Result};

use crate::clip::tokenizer::{Tokenizer, EOT_TOKEN, SOT_TOKEN};

/// Print the CLIP BPE token ids of each TEXT: start and end tokens included, cut to the
/// 77-token context like open_clip, no padding.
#[derive(clap::Args, Debug)]
pub struct TokenizeArgs {
    /// Print one JSON array holding one array of ids per text, instead of one line of
    /// space-separated ids per text.
    #[arg(long)]
    pub json: bool,

    /// Text to tokenize (one or more; quote each). Options go before the texts: from the
    /// first TEXT on, every argument is text, also one that starts with '-' (`tokenize
    /// --json -x`). A first text made only of option letters (`-h`, `-q`, `-v`) or equal to
    /// an option needs `--` before it.
    #[arg(value_name = "TEXT", required = true, num_args = 1.., allow_hyphen_values = true)]
    pub texts: Vec<String>,
}

/// Tokenize every text and print the ids to stdout.
pub fn run(args: &TokenizeArgs) -> Result<()> {
    check_not_blank(&args.texts)?;
    let tokenizer = Tokenizer::new()?;
    let mut sequences = Vec::with_capacity(args.texts.len());
    for (i, text) in args.texts.iter().enumerate() {
        let ids = tokenizer.tokenize(text);
        if ids == [SOT_TOKEN, EOT_TOKEN] {
            bail!(
                "text {} ({text:?}) has no tokens once cleaned (only control or invisible \
                 characters): give visible text",
                i + 1
            );
        }
        sequences.push(ids);
    }
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(render(&sequences, args.json)?.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// Reject empty and whitespace-only texts, naming the first one (counted from 1).
fn check_not_blank(texts: &[String]) -> Result<()> {
    if let Some(i) = texts.iter().position(|text| text.trim().is_empty()) {
        bail!(
            "text {} is empty or only whitespace: give a non-empty string",
            i + 1
        );
    }
    Ok(())
}

/// The output text: a JSON array of arrays, or one line of space-separated ids per text.
fn render(sequences: &[Vec<i64>], json: bool) -> Result<String> {
    if json {
        return Ok(serde_json::to_string(sequences)? + "\n");
    }
    let lines: Vec<String> = sequences
        .iter()
        .map(|ids| {
            let words: Vec<String> = ids.iter().map(i64::to_string).collect();
            words.join(" ") + "\n"
        })
        .collect();
    Ok(lines.concat())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser, Debug)]
    struct Wrapper {
        #[command(flatten)]
        args: TokenizeArgs,
    }

    fn parse(argv: &[&str]) -> Result<TokenizeArgs, clap::Error> {
        Wrapper::try_parse_from(std::iter::once("tokenize").chain(argv.iter().copied()))
            .map(|wrapper| wrapper.args)
    }

    #[test]
    fn definition_is_valid() {
        Wrapper::command().debug_assert();
    }

    #[test]
    fn parses_one_text() {
        let args = parse(&["a photo of a cat"]).unwrap();
        assert!(!args.json);
        assert_eq!(args.texts, ["a photo of a cat"]);
    }

    #[test]
    fn parses_several_texts_after_the_options() {
        let args = parse(&["--json", "one", "two"]).unwrap();
        assert!(args.json);
        assert_eq!(args.texts, ["one", "two"]);
        // From the first text on, everything is text.
        let args = parse(&["one", "--json", "-x"]).unwrap();
        assert!(!args.json);
        assert_eq!(args.texts, ["one", "--json", "-x"]);
    }

    #[test]
    fn needs_a_text() {
        let err = parse(&["--json"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn texts_may_start_with_a_dash() {
        let args = parse(&["-hello"]).unwrap();
        assert_eq!(args.texts, ["-hello"]);
        let args = parse(&["--json", "-x", "--no-such-flag"]).unwrap();
        assert!(args.json);
        assert_eq!(args.texts, ["-x", "--no-such-flag"]);
        let args = parse(&["--not-an-option", "-1"]).unwrap();
        assert!(!args.json);
        assert_eq!(args.texts, ["--not-an-option", "-1"]);
        // An option's own spelling still needs `--`.
        let args = parse(&["--", "--json", "-h"]).unwrap();
        assert!(!args.json);
        assert_eq!(args.texts, ["--json", "-h"]);
        let help = parse(&["--help"]).unwrap_err();
        assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
        let help = parse(&["-h"]).unwrap_err();
        assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
    }

    #[test]
    fn rejects_blank_texts_by_position() {
        let texts = ["cat".to_string(), " \t".to_string()];
        let err = check_not_blank(&texts).unwrap_err().to_string();
        assert_eq!(
            err,
            "text 2 is empty or only whitespace: give a non-empty string"
        );
        assert!(check_not_blank(&["".to_string()]).is_err());
        assert!(check_not_blank(&["a".to_string()]).is_ok());
    }

    #[test]
    fn renders_lines_and_json() {
        let sequences = vec![vec![49406, 320, 49407], vec![49406, 49407]];
        assert_eq!(
            render(&sequences, false).unwrap(),
            "49406 320 49407\n49406 49407\n"
        );
        assert_eq!(
            render(&sequences, true).unwrap(),
            "[[49406,320,49407],[49406,49407]]\n"
        );
    }
}
