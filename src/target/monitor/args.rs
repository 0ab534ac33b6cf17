//! Parsing monitor arguments: numbers, sizes, rights and `--options`.

use super::errors::{usage, CmdError};
use super::expr;
use crate::vmem::{BasicMapping, CowMapping, MappingKind, PageSize};

/// Positional words and `--name [value]` options of one command.
#[derive(Debug, Default)]
pub(crate) struct Args<'a> {
    pub positional: Vec<&'a str>,
    options: Vec<(&'a str, &'a str)>,
}

/// An option a command knows, and whether it takes a value.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Opt {
    /// `--name VALUE`: the value is required.
    Value(&'static str),
    /// `--name`: on or off, no value.
    Flag(&'static str),
    /// `--name [VALUE]`: takes the next word unless it is an option.
    MaybeValue(&'static str),
}

impl Opt {
    fn name(self) -> &'static str {
        match self {
            Opt::Value(name) | Opt::Flag(name) | Opt::MaybeValue(name) => name,
        }
    }
}

impl<'a> Args<'a> {
    /// Split `words`; every option must be one of `known`.
    pub(crate) fn parse(words: &[&'a str], known: &[Opt]) -> Result<Args<'a>, CmdError> {
        let mut args = Args::default();
        let mut rest = words.iter().peekable();
        while let Some(&word) = rest.next() {
            let Some(name) = word.strip_prefix("--") else {
                args.positional.push(word);
                continue;
            };
            let spec = known
                .iter()
                .find(|opt| opt.name() == name)
                .ok_or_else(|| usage(format!("unknown option --{name}")))?;
            let value = match spec {
                Opt::Flag(_) => "",
                Opt::Value(_) => rest
                    .next()
                    .ok_or_else(|| usage(format!("--{name} needs a value")))?,
                Opt::MaybeValue(_) => rest.next_if(|w| !w.starts_with("--")).unwrap_or(&""),
            };
            args.options.push((name, value));
        }
        Ok(args)
    }

    /// Whether `--name` was given.
    pub(crate) fn flag(&self, name: &str) -> bool {
        self.options.iter().any(|(n, _)| *n == name)
    }

    /// Refuse positional words where a command takes none.
    pub(crate) fn no_positional(&self) -> Result<(), CmdError> {
        match self.positional.first() {
            Some(word) => Err(usage(format!("unexpected argument '{word}'"))),
            None => Ok(()),
        }
    }

    /// The value of `--name`, if given.
    pub(crate) fn option(&self, name: &str) -> Option<&'a str> {
        self.options
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }

    /// `--limit N` (rows to print), or `default`.
    pub(crate) fn limit(&self, default: usize) -> Result<usize, CmdError> {
        match self.option("limit") {
            Some(n) => usize::try_from(number(n)?).map_err(|_| usage("--limit is too large")),
            None => Ok(default),
        }
    }

    /// Positional argument `i` as a number.
    pub(crate) fn number(&self, i: usize, what: &str) -> Result<u64, CmdError> {
        let word = self
            .positional
            .get(i)
            .ok_or_else(|| usage(format!("missing {what}")))?;
        number(word).map_err(|e| match e {
            CmdError::Usage(why) | CmdError::Failed(why) => usage(format!("{what}: {why}")),
        })
    }
}

/// `0x1f`, `31`, `4k`, `2M`, `1g` (sizes are binary), or an expression
/// of them with `+ - * & |` and parentheses (`$reg` names are replaced by
/// values before).
pub(crate) fn number(word: &str) -> Result<u64, CmdError> {
    if expr::is_expression(word) {
        return expr::eval(word, plain_number);
    }
    plain_number(word)
}

/// A number without operators.
fn plain_number(word: &str) -> Result<u64, CmdError> {
    let lower = word.to_ascii_lowercase();
    let (digits, shift) = match lower.as_bytes().last() {
        Some(b'k') => (&lower[..lower.len() - 1], 10),
        Some(b'm') => (&lower[..lower.len() - 1], 20),
        Some(b'g') => (&lower[..lower.len() - 1], 30),
        _ => (lower.as_str(), 0),
    };
    let digits = digits.replace('_', "");
    let value = match digits.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => digits.parse::<u64>(),
    }
    .map_err(|_| usage(format!("'{word}' is not a number")))?;
    value
        .checked_mul(1 << shift)
        .ok_or_else(|| usage(format!("'{word}' is too large")))
}

/// Rights from letters of `rwxuc` (`c` = copy-on-write); x86 pages are
/// always readable, so `r` may be left out.
pub(crate) fn rights(word: &str) -> Result<(MappingKind, bool), CmdError> {
    if word.is_empty() || !word.chars().all(|c| "rwxuc-".contains(c)) {
        return Err(usage(format!(
            "'{word}' is not a set of rights (letters r w x u c)"
        )));
    }
    let has = |c| word.contains(c);
    let kind = if has('c') {
        if has('w') {
            return Err(usage("a copy-on-write page cannot be writable"));
        }
        MappingKind::Cow(CowMapping {
            readable: true,
            executable: has('x'),
        })
    } else {
        MappingKind::Basic(BasicMapping {
            readable: true,
            writable: has('w'),
            executable: has('x'),
        })
    };
    Ok((kind, has('u')))
}

/// `4k`, `2m` or `1g`.
pub(crate) fn page_size(word: &str) -> Result<PageSize, CmdError> {
    match word.to_ascii_lowercase().as_str() {
        "4k" => Ok(PageSize::SIZE_4K),
        "2m" => Ok(PageSize::SIZE_2M),
        "1g" => Ok(PageSize::SIZE_1G),
        _ => Err(usage(format!(
            "page size '{word}' is not one of 4k, 2m, 1g"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_sizes_and_rights() {
        assert_eq!(number("0x1000"), Ok(0x1000));
        assert_eq!(number("4096"), Ok(4096));
        assert_eq!(number("2M"), Ok(2 << 20));
        assert_eq!(number("0xffff_ffff_8000_0000"), Ok(0xffff_ffff_8000_0000));
        assert!(number("zz").is_err());
        assert!(number("99999999999999999999g").is_err());
        assert!(rights("rw").is_ok());
        assert!(rights("rq").is_err());
        assert!(rights("cw").is_err());
        let known = [
            Opt::Value("space"),
            Opt::Flag("all"),
            Opt::MaybeValue("scan"),
        ];
        let args = Args::parse(&["1", "--space", "0x1000", "2"], &known).unwrap();
        assert_eq!(args.positional, vec!["1", "2"]);
        assert_eq!(args.option("space"), Some("0x1000"));
        assert!(!args.flag("all"));
        assert!(Args::parse(&["--bogus", "1"], &known).is_err());
        assert!(Args::parse(&["--space"], &known).is_err());
        // A flag takes no value: the next word stays positional.
        let args = Args::parse(
            &["--all", "--limit"],
            &[Opt::Flag("all"), Opt::Value("limit")],
        );
        assert!(args.is_err(), "--limit still needs its value");
        let args = Args::parse(&["--all", "1"], &known).unwrap();
        assert!(args.flag("all"));
        assert_eq!(args.positional, vec!["1"]);
        assert!(args.no_positional().is_err());
        // An optional value is taken unless the next word is an option.
        let args = Args::parse(&["--scan", "--all"], &known).unwrap();
        assert_eq!(args.option("scan"), Some(""));
        assert!(args.flag("all"));
        let args = Args::parse(&["--scan", "any"], &known).unwrap();
        assert_eq!(args.option("scan"), Some("any"));
    }
}
