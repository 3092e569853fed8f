//! `berth-login`: root's login shell for SSH. sshd runs it as `berth-login -c COMMAND`
//! for `ssh HOST COMMAND`, and as `-berth-login` for a plain login. The command is split
//! into words as a shell would split them (blanks, '...' and "..." quoting, backslash
//! escapes) and nothing more: no variables, globs, pipes, redirections, command lists or
//! substitutions. A character that would mean one of those to a shell is refused unless
//! quoted, so nobody types `ps; reboot` and gets something they did not expect. The
//! words are berthctl's arguments; a plain login gets a short help and the machine's
//! state.

use std::process::ExitCode;

/// Characters a POSIX shell would give a meaning to outside quotes.
const METACHARACTERS: &str = "|&;<>()$`*?[]{}~#!";

/// Why a command line is not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum SplitError {
    Metacharacter(char),
    /// `$` or a backquote inside "...": a shell would expand it.
    Expansion(char),
    Unterminated(char),
    ControlCharacter,
}

impl std::fmt::Display for SplitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SplitError::Metacharacter(c) => write!(
                f,
                "{c:?} means something to a shell, and this login runs berthctl, not a \
                 shell: quote it ('...') to pass it inside an argument"
            ),
            SplitError::Expansion(c) => write!(
                f,
                "{c:?} inside \"...\" would be expanded by a shell: use '...' to pass it"
            ),
            SplitError::Unterminated(q) => write!(f, "a {q} quote is not closed"),
            SplitError::ControlCharacter => {
                write!(f, "a control character (a newline?) in the command")
            }
        }
    }
}

/// The words of `line`, split as described in the module's comment.
pub fn split(line: &str) -> Result<Vec<String>, SplitError> {
    let mut words = Vec::new();
    let mut word = String::new();
    // Whether a word has begun (so that '' is an empty argument).
    let mut started = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            '\'' => {
                started = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) if c.is_control() && c != '\t' => {
                            return Err(SplitError::ControlCharacter)
                        }
                        Some(c) => word.push(c),
                        None => return Err(SplitError::Unterminated('\'')),
                    }
                }
            }
            '"' => {
                started = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(e @ ('"' | '\\' | '$' | '`')) => word.push(e),
                            Some(c) if c.is_control() && c != '\t' => {
                                return Err(SplitError::ControlCharacter)
                            }
                            Some(other) => {
                                word.push('\\');
                                word.push(other);
                            }
                            None => return Err(SplitError::Unterminated('"')),
                        },
                        Some(e @ ('$' | '`')) => return Err(SplitError::Expansion(e)),
                        Some(c) if c.is_control() && c != '\t' => {
                            return Err(SplitError::ControlCharacter)
                        }
                        Some(c) => word.push(c),
                        None => return Err(SplitError::Unterminated('"')),
                    }
                }
            }
            '\\' => {
                started = true;
                match chars.next() {
                    Some(c) if c.is_control() => return Err(SplitError::ControlCharacter),
                    Some(c) => word.push(c),
                    None => word.push('\\'),
                }
            }
            c if c.is_control() => return Err(SplitError::ControlCharacter),
            c if METACHARACTERS.contains(c) => return Err(SplitError::Metacharacter(c)),
            c => {
                started = true;
                word.push(c);
            }
        }
    }
    if started {
        words.push(word);
    }
    Ok(words)
}

/// What a plain login prints before the machine's state.
const WELCOME: &str = "\
This is a Berth host. Its login runs berthctl commands, never a shell:
  ssh HOST ps                      containers (ps -a: all)
  ssh HOST logs -f NAME            a container's output
  ssh -t HOST exec -it NAME sh     a terminal in a container
  ssh -t HOST debug                a privileged shell in the host's namespaces
  ssh HOST services | slots | config | update status | reboot
  ssh HOST --help                  everything berthctl does
";

/// Runs the login: `args` as sshd gives them (the program name first).
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let args: Vec<String> = args
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let command = match args.as_slice() {
        [_] => None,
        [_, flag, command] if flag == "-c" => Some(command.as_str()),
        _ => {
            eprintln!("berth-login: run by sshd as `berth-login -c COMMAND`, or as a login");
            return ExitCode::from(2);
        }
    };
    let words = match command.map(split) {
        None => Vec::new(),
        Some(Ok(w)) => w,
        Some(Err(e)) => {
            eprintln!("berth-login: not run: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(first) = words.first() else {
        println!("{WELCOME}");
        let _ = std::io::Write::flush(&mut std::io::stdout());
        for verb in ["services", "ps"] {
            let _ = crate::main(["berthctl", verb].map(std::ffi::OsString::from));
            println!();
        }
        return ExitCode::SUCCESS;
    };
    if first.contains('/') {
        eprintln!(
            "berth-login: {first:?}: this login runs berthctl commands, not programs \
             (`ssh HOST --help` lists them; `ssh -t HOST debug` is a shell for emergencies)"
        );
        return ExitCode::from(126);
    }
    let argv = std::iter::once("berthctl".to_string()).chain(words);
    crate::main(argv.map(std::ffi::OsString::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        split(line).unwrap()
    }

    #[test]
    fn blanks_split_and_quotes_group() {
        assert_eq!(words("  ps   -a "), ["ps", "-a"]);
        assert_eq!(
            words("exec -it web sh -c 'tty; exit 7'"),
            ["exec", "-it", "web", "sh", "-c", "tty; exit 7"]
        );
        assert_eq!(
            words(r#"run -e "GREETING=hello world" -e A=\"b\" img"#),
            ["run", "-e", "GREETING=hello world", "-e", "A=\"b\"", "img"]
        );
        assert_eq!(words("logs ''"), ["logs", ""]);
        assert_eq!(words(r"a\ b"), ["a b"]);
        assert_eq!(words(""), Vec::<String>::new());
    }

    #[test]
    fn what_a_shell_would_interpret_is_refused() {
        for (line, e) in [
            ("ps; reboot", SplitError::Metacharacter(';')),
            ("ps | cat", SplitError::Metacharacter('|')),
            ("logs $(id)", SplitError::Metacharacter('$')),
            ("logs `id`", SplitError::Metacharacter('`')),
            ("ps > /tmp/x", SplitError::Metacharacter('>')),
            ("rm *", SplitError::Metacharacter('*')),
            ("ps &", SplitError::Metacharacter('&')),
            ("logs ~root", SplitError::Metacharacter('~')),
            ("logs \"$HOME\"", SplitError::Expansion('$')),
            ("logs 'web", SplitError::Unterminated('\'')),
            ("logs \"web", SplitError::Unterminated('"')),
            ("ps\nreboot", SplitError::ControlCharacter),
            ("logs \"a\\\nb\"", SplitError::ControlCharacter),
        ] {
            assert_eq!(split(line), Err(e), "{line:?}");
        }
        assert!(SplitError::Metacharacter(';')
            .to_string()
            .contains("not a shell"));
    }
}
