//! A small logic-less template language for the files in `templates/`:
//! `{{name}}` inserts a value (escaped for the target file format),
//! `{{#name}}…{{/name}}` repeats for each item of a list or shows once for a
//! true flag or a non-empty text, `{{^name}}…{{/name}}` shows when it is
//! empty or false, `{{! comment }}` is dropped. A section or comment tag alone
//! on its line takes the whole line with it, so templates read like the
//! files they produce. Unknown names are errors, so a typo in a template
//! fails the tests instead of rendering a hole.

use std::fmt;

/// A value a template can refer to.
#[derive(Clone, Debug)]
pub enum Value {
    Text(String),
    Flag(bool),
    List(Vec<Context>),
}

/// Names and values visible to a template (or to one item of a list).
#[derive(Clone, Debug, Default)]
pub struct Context {
    vars: Vec<(String, Value)>,
}

impl Context {
    pub fn new() -> Context {
        Context::default()
    }

    pub fn text(mut self, name: &str, value: impl Into<String>) -> Context {
        self.vars
            .push((name.to_string(), Value::Text(value.into())));
        self
    }

    /// A text that may be absent: an empty text, so `{{#name}}` skips it.
    pub fn maybe(self, name: &str, value: Option<impl Into<String>>) -> Context {
        let value = value.map(Into::into).unwrap_or_default();
        self.text(name, value)
    }

    pub fn flag(mut self, name: &str, value: bool) -> Context {
        self.vars.push((name.to_string(), Value::Flag(value)));
        self
    }

    pub fn list(mut self, name: &str, items: Vec<Context>) -> Context {
        self.vars.push((name.to_string(), Value::List(items)));
        self
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.vars
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }
}

/// A template that cannot be rendered: a syntax error or an unknown name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError(pub String);

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TemplateError {}

#[derive(Debug)]
enum Node {
    Text(String),
    Var(String),
    Section {
        name: String,
        inverted: bool,
        body: Vec<Node>,
    },
}

enum Token {
    Text(String),
    Var(String),
    Open(String, bool),
    Close(String),
}

fn tokenize(template: &str) -> Result<Vec<Token>, TemplateError> {
    let mut tokens = Vec::new();
    let mut pos = 0;
    while let Some(found) = template[pos..].find("{{") {
        let start = pos + found;
        let close = template[start + 2..]
            .find("}}")
            .ok_or_else(|| TemplateError(format!("unclosed `{{{{` at byte {start}")))?;
        let end = start + 2 + close + 2;
        let tag = template[start + 2..end - 2].trim();
        let mut text_end = start;
        let mut next = end;
        let standalone_kind = matches!(tag.chars().next(), Some('#' | '^' | '/' | '!'));
        if standalone_kind {
            let line_start = template[..start].rfind('\n').map_or(0, |i| i + 1);
            let before_blank = template[line_start..start]
                .chars()
                .all(|c| c == ' ' || c == '\t');
            let rest = &template[end..];
            let trailing = rest.len() - rest.trim_start_matches([' ', '\t']).len();
            let after = &rest[trailing..];
            let after_ends_line = after.is_empty() || after.starts_with('\n');
            if before_blank && after_ends_line {
                text_end = line_start.max(pos);
                next = end + trailing + usize::from(after.starts_with('\n'));
            }
        }
        if text_end > pos {
            tokens.push(Token::Text(template[pos..text_end].to_string()));
        }
        let name = |prefix_len: usize| tag[prefix_len..].trim().to_string();
        match tag.chars().next() {
            Some('#') => tokens.push(Token::Open(name(1), false)),
            Some('^') => tokens.push(Token::Open(name(1), true)),
            Some('/') => tokens.push(Token::Close(name(1))),
            Some('!') => {}
            Some(_) => tokens.push(Token::Var(tag.to_string())),
            None => return Err(TemplateError(format!("empty tag at byte {start}"))),
        }
        pos = next;
    }
    if pos < template.len() {
        tokens.push(Token::Text(template[pos..].to_string()));
    }
    Ok(tokens)
}

fn parse(tokens: Vec<Token>) -> Result<Vec<Node>, TemplateError> {
    // A stack of open sections; the bottom one is the whole template.
    let mut stack: Vec<(String, bool, Vec<Node>)> = vec![(String::new(), false, Vec::new())];
    for token in tokens {
        match token {
            Token::Text(text) => push(&mut stack, Node::Text(text)),
            Token::Var(name) => push(&mut stack, Node::Var(name)),
            Token::Open(name, inverted) => stack.push((name, inverted, Vec::new())),
            Token::Close(name) => {
                if stack.len() < 2 {
                    return Err(TemplateError(format!("`{{{{/{name}}}}}` closes nothing")));
                }
                let Some((open, inverted, body)) = stack.pop() else {
                    return Err(TemplateError(format!("`{{{{/{name}}}}}` closes nothing")));
                };
                if open != name {
                    return Err(TemplateError(format!(
                        "`{{{{/{name}}}}}` closes `{{{{#{open}}}}}`"
                    )));
                }
                push(
                    &mut stack,
                    Node::Section {
                        name,
                        inverted,
                        body,
                    },
                );
            }
        }
    }
    match stack.pop() {
        Some((name, _, nodes)) if stack.is_empty() && name.is_empty() => Ok(nodes),
        Some((name, _, _)) => Err(TemplateError(format!("`{{{{#{name}}}}}` is never closed"))),
        None => Err(TemplateError("empty template stack".to_string())),
    }
}

fn push(stack: &mut [(String, bool, Vec<Node>)], node: Node) {
    if let Some((_, _, nodes)) = stack.last_mut() {
        nodes.push(node);
    }
}

fn lookup<'a>(scopes: &[&'a Context], name: &str) -> Result<&'a Value, TemplateError> {
    scopes
        .iter()
        .rev()
        .find_map(|scope| scope.get(name))
        .ok_or_else(|| TemplateError(format!("unknown template variable `{name}`")))
}

fn render_nodes(
    nodes: &[Node],
    scopes: &mut Vec<&Context>,
    escape: &dyn Fn(&str) -> String,
    out: &mut String,
) -> Result<(), TemplateError> {
    for node in nodes {
        match node {
            Node::Text(text) => out.push_str(text),
            Node::Var(name) => match lookup(scopes, name)? {
                Value::Text(text) => out.push_str(&escape(text)),
                Value::Flag(flag) => out.push_str(if *flag { "true" } else { "false" }),
                Value::List(_) => {
                    return Err(TemplateError(format!(
                        "`{name}` is a list; use {{{{#{name}}}}}…{{{{/{name}}}}}"
                    )));
                }
            },
            Node::Section {
                name,
                inverted,
                body,
            } => {
                let value = lookup(scopes, name)?;
                let items: Vec<Option<&Context>> = match value {
                    Value::Text(text) => vec![None; usize::from(!text.is_empty())],
                    Value::Flag(flag) => vec![None; usize::from(*flag)],
                    Value::List(list) => list.iter().map(Some).collect(),
                };
                if *inverted {
                    if items.is_empty() {
                        render_nodes(body, scopes, escape, out)?;
                    }
                    continue;
                }
                for item in items {
                    match item {
                        Some(context) => {
                            scopes.push(context);
                            let result = render_nodes(body, scopes, escape, out);
                            scopes.pop();
                            result?;
                        }
                        None => render_nodes(body, scopes, escape, out)?,
                    }
                }
            }
        }
    }
    Ok(())
}

/// Renders `template` with `context`, passing every inserted value through
/// `escape` (which makes it safe for the target format).
pub fn render(
    template: &str,
    context: &Context,
    escape: &dyn Fn(&str) -> String,
) -> Result<String, TemplateError> {
    let nodes = parse(tokenize(template)?)?;
    let mut out = String::with_capacity(template.len() * 2);
    let mut scopes = vec![context];
    render_nodes(&nodes, &mut scopes, escape, &mut out)?;
    Ok(out)
}

/// Escapes a value for the inside of a TOML basic string (`"…"`).
pub fn toml_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// Escapes a value for a systemd unit: `%` specifiers are doubled, and a
/// value with spaces or quotes is double-quoted (as `ExecStart=` reads it).
pub fn systemd_escape(value: &str) -> String {
    let value = value.replace('%', "%%");
    if value
        .chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\'' || c == '\\' || c == ';')
    {
        format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        value
    }
}

/// No escaping, for values the caller has already made safe.
pub fn verbatim(value: &str) -> String {
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(template: &str, context: &Context) -> String {
        render(template, context, &verbatim).unwrap()
    }

    #[test]
    fn variables_and_escaping() {
        let context = Context::new().text("name", "a \"b\"");
        assert_eq!(r("x = {{name}}!", &context), "x = a \"b\"!");
        assert_eq!(
            render("x = \"{{ name }}\"", &context, &toml_escape).unwrap(),
            "x = \"a \\\"b\\\"\""
        );
    }

    #[test]
    fn sections_repeat_and_standalone_lines_vanish() {
        let context = Context::new().list(
            "items",
            vec![
                Context::new().text("n", "one").maybe("extra", Some("E")),
                Context::new()
                    .text("n", "two")
                    .maybe("extra", None::<String>),
            ],
        );
        let template = "start\n{{#items}}\n- {{n}}\n  {{#extra}}\n  extra={{extra}}\n  {{/extra}}\n{{/items}}\n{{^items}}\nnone\n{{/items}}\nend\n";
        assert_eq!(
            r(template, &context),
            "start\n- one\n  extra=E\n- two\nend\n"
        );
        let empty = Context::new().list("items", Vec::new());
        assert_eq!(r(template, &empty), "start\nnone\nend\n");
    }

    #[test]
    fn inline_sections_and_flags() {
        let context = Context::new().flag("on", true).flag("off", false);
        assert_eq!(
            r(
                "a{{#on}}B{{/on}}{{#off}}C{{/off}}{{^off}}D{{/off}}",
                &context
            ),
            "aBD"
        );
        assert_eq!(r("{{! note }}x", &context), "x");
    }

    #[test]
    fn mistakes_are_errors() {
        let context = Context::new();
        assert!(render("{{missing}}", &context, &verbatim).is_err());
        assert!(render("{{#a}}x", &Context::new().flag("a", true), &verbatim).is_err());
        assert!(render("{{/a}}", &context, &verbatim).is_err());
        assert!(render("{{a", &context, &verbatim).is_err());
    }

    #[test]
    fn systemd_values_are_quoted_when_needed() {
        assert_eq!(systemd_escape("/usr/local/bin/apx"), "/usr/local/bin/apx");
        assert_eq!(systemd_escape("/home/a b/apx"), "\"/home/a b/apx\"");
        assert_eq!(systemd_escape("50%"), "50%%");
    }
}
