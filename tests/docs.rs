//! The guide's command examples run as tests: every ```` ```console ```` block of README.md and
//! docs/*.md is a transcript (`$ graft ...`, an optional `? failed` / `? 2` status line, then the
//! output, stdout and stderr together) that the release binary must reproduce. In the expected
//! output `[..]` stands for any text within a line and a line `...` for any lines (snapbox's
//! filters, as trycmd reads the same syntax). Blocks marked ```` ```console,ignore ```` (long
//! runs: fine-tuning, pretraining, serving) and every other language are shown, not run.
//!
//! trycmd would read these blocks itself, but its toml_edit dependency turns on features of
//! `toml`, below burn's `cubecl-environment`, so the test build would compile all of burn a second
//! time with other features (and the Python wheel a third); snapbox alone changes no feature.
//!
//! Commands run in the repository root, so `../shared/...` paths work as in the guide, with the
//! default weights store that `tests/all.sh` fills before the tests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use snapbox::cmd::Command;
use snapbox::{Assert, Data};

/// One `$ ` command of a console block and the transcript that follows it.
#[derive(Debug, PartialEq)]
struct Example {
    file: PathBuf,
    line: usize,
    env: Vec<(String, String)>,
    program: String,
    args: Vec<String>,
    status: Status,
    expected: String,
}

#[derive(Debug, PartialEq)]
enum Status {
    Success,
    Failed,
    Code(i32),
}

impl Status {
    fn parse(text: &str) -> Result<Status, String> {
        match text.trim() {
            "success" => Ok(Status::Success),
            "failed" => Ok(Status::Failed),
            code => code
                .parse()
                .map(Status::Code)
                .map_err(|_| format!("`? {code}`: expected success, failed or an exit code")),
        }
    }

    fn matches(&self, code: Option<i32>) -> bool {
        match self {
            Status::Success => code == Some(0),
            Status::Failed => code.is_some_and(|c| c != 0),
            Status::Code(want) => code == Some(*want),
        }
    }
}

/// The examples of one Markdown file, in order.
fn parse(file: &Path, text: &str) -> Result<Vec<Example>, String> {
    let mut examples = Vec::new();
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l)).peekable();
    while let Some((_, line)) = lines.next() {
        let Some(info) = line.trim_start().strip_prefix("```") else {
            continue;
        };
        let mut info = info.split(',').map(str::trim);
        let runs = info.next() == Some("console") && !info.any(|attr| attr == "ignore");
        // Collect the block, then read it as a transcript when it runs.
        let mut block = Vec::new();
        for (number, line) in lines.by_ref() {
            if line.trim_start().starts_with("```") {
                break;
            }
            block.push((number, line));
        }
        if runs {
            examples.extend(transcript(file, &block)?);
        }
    }
    Ok(examples)
}

fn transcript(file: &Path, block: &[(usize, &str)]) -> Result<Vec<Example>, String> {
    let mut examples: Vec<Example> = Vec::new();
    for &(number, line) in block {
        if let Some(command) = line.strip_prefix("$ ") {
            let mut words = command.split_whitespace().map(str::to_owned);
            let mut env = Vec::new();
            let program = loop {
                let word = words
                    .next()
                    .ok_or_else(|| format!("{}:{number}: `$` without a command", file.display()))?;
                match word.split_once('=') {
                    Some((key, value)) => env.push((key.to_owned(), value.to_owned())),
                    None => break word,
                }
            };
            examples.push(Example {
                file: file.to_owned(),
                line: number,
                env,
                program,
                args: words.collect(),
                status: Status::Success,
                expected: String::new(),
            });
            continue;
        }
        let Some(example) = examples.last_mut() else {
            return Err(format!(
                "{}:{number}: a console block must start with `$ `, got `{line}`",
                file.display()
            ));
        };
        match line.strip_prefix("? ") {
            Some(status) if example.expected.is_empty() => {
                example.status = Status::parse(status)
                    .map_err(|e| format!("{}:{number}: {e}", file.display()))?
            }
            _ => {
                example.expected.push_str(line);
                example.expected.push('\n');
            }
        }
    }
    Ok(examples)
}

/// README.md and docs/*.md, sorted.
fn guide_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md")];
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ is readable")
        .map(|entry| entry.expect("docs/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    pages.sort();
    files.extend(pages);
    files
}

/// Runs one example; the error says where it is, what ran and how the output differs.
fn check(root: &Path, example: &Example) -> Result<(), String> {
    let at = format!("{}:{}", example.file.display(), example.line);
    if example.program != "graft" {
        return Err(format!(
            "{at}: console blocks run `graft` only, got `{}` (mark the block `console,ignore`)",
            example.program
        ));
    }
    let output = Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(&example.args)
        .envs(example.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(root)
        .stderr_to_stdout()
        .timeout(Duration::from_secs(300))
        .output()
        .map_err(|e| format!("{at}: could not run graft: {e}"))?;
    let code = output.status.code();
    let shown = String::from_utf8_lossy(&output.stdout);
    if !example.status.matches(code) {
        return Err(format!(
            "{at}: `graft {}` exited with {code:?}, the guide says {:?}; its output:\n{shown}",
            example.args.join(" "),
            example.status
        ));
    }
    Assert::new()
        .try_eq(
            Some(&at),
            Data::text(shown.trim_end().to_owned()),
            Data::text(example.expected.trim_end().to_owned()),
        )
        .map_err(|e| format!("{at}: `graft {}`: {e}", example.args.join(" ")))
}

#[test]
fn the_guides_console_examples_give_the_output_they_show() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut examples = Vec::new();
    for file in guide_files(root) {
        let text = std::fs::read_to_string(&file).expect("guide page is readable");
        let relative = file.strip_prefix(root).unwrap_or(&file);
        examples.extend(parse(relative, &text).unwrap_or_else(|e| panic!("{e}")));
    }
    assert!(
        examples.len() >= 8,
        "only {} console examples found in README.md and docs/*.md",
        examples.len()
    );
    let failures: Vec<String> = examples
        .iter()
        .filter_map(|example| check(root, example).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} guide examples differ:\n\n{}",
        failures.len(),
        examples.len(),
        failures.join("\n\n")
    );
    println!("{} guide examples ran as shown", examples.len());
}

#[test]
fn transcripts_read_commands_environment_status_and_output_and_skip_ignored_blocks() {
    let page = "\
text
```console
$ GRAFT_HOME=target/x graft weights list
? failed
a [..]
...
$ graft summary
```
```console,ignore
$ graft train big
```
```sh
$ not a transcript
```
";
    let examples = parse(Path::new("page.md"), page).unwrap();
    assert_eq!(examples.len(), 2);
    assert_eq!(examples[0].line, 3);
    assert_eq!(examples[0].env, [("GRAFT_HOME".into(), "target/x".into())]);
    assert_eq!(examples[0].args, ["weights", "list"]);
    assert_eq!(examples[0].status, Status::Failed);
    assert_eq!(examples[0].expected, "a [..]\n...\n");
    assert_eq!(examples[1].args, ["summary"]);
    assert_eq!(examples[1].status, Status::Success);
    assert!(parse(Path::new("p.md"), "```console\noutput first\n```\n").is_err());
    // The filters the transcripts rely on.
    assert!(
        Assert::new()
            .try_eq(
                None,
                Data::text("a 1\nb\nc\nd"),
                Data::text("a [..]\n...\nd")
            )
            .is_ok()
    );
    assert!(
        Assert::new()
            .try_eq(None, Data::text("a 1\nd"), Data::text("a 2\n...\nd"))
            .is_err()
    );
}
