//! The subset of Go's `text/template` that `docker ... --format` users write, evaluated over JSON.
//!
//! Supported: text with `{{ ... }}` actions (and the `{{-`/`-}}` trim markers); `.` and field paths `.A.B.C`;
//! the functions `json X`, `index X "key"…`, `join X "sep"`, `upper X`, `lower X`, `len X`, `title X`, `println X`;
//! `X | json` style pipes into one of those functions; a leading `table ` (a header row from the field names, as
//! docker prints) and the escapes `\t` and `\n`. Values print as Go prints them: strings raw, lists `[a b]`, maps
//! `map[k:v]` with sorted keys, a missing key `<no value>`. Not supported (an error says so): `range`, `if`,
//! `with`, variables and comparisons. Hand-written: no maintained crate evaluates Go templates, and docker's
//! templates in practice use only these forms.

use anyhow::{Result, bail};
use serde_json::Value;

/// A parsed `--format`.
#[derive(Debug)]
pub struct Template {
    parts: Vec<Part>,
    /// `table ...`: print a header row first.
    pub table: bool,
}

#[derive(Debug)]
enum Part {
    Text(String),
    Action(Vec<String>),
}

impl Template {
    pub fn parse(format: &str) -> Result<Template> {
        let (table, body) = match format.strip_prefix("table") {
            Some(rest) if rest.is_empty() || rest.starts_with(char::is_whitespace) => (true, rest.trim_start()),
            _ => (false, format),
        };
        let body = body.replace("\\t", "\t").replace("\\n", "\n");
        let mut parts = Vec::new();
        let mut rest = body.as_str();
        while let Some(start) = rest.find("{{") {
            let mut text = rest[..start].to_string();
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or_else(|| anyhow::anyhow!("--format {format:?}: unclosed {{{{"))?;
            let mut inner = &after[..end];
            if let Some(i) = inner.strip_prefix('-') {
                inner = i;
                text = text.trim_end().to_string();
            }
            let trim_after = inner.ends_with('-');
            if trim_after {
                inner = &inner[..inner.len() - 1];
            }
            if !text.is_empty() {
                parts.push(Part::Text(text));
            }
            parts.push(Part::Action(tokenize(inner, format)?));
            rest = &after[end + 2..];
            if trim_after {
                rest = rest.trim_start();
            }
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template { parts, table })
    }

    /// Renders the template for `data`.
    pub fn render(&self, data: &Value) -> Result<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Action(tokens) => out.push_str(&display(&eval(tokens, data)?)),
            }
        }
        Ok(out)
    }

    /// The header row of a `table` format: each field's name in upper case, docker's way (`.ID` → `ID`,
    /// `.Repository` → `REPOSITORY`, `.CreatedAt` → `CREATED AT`).
    pub fn header(&self) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Action(tokens) => {
                    let field = tokens.iter().rfind(|t| t.starts_with('.')).map_or("", |t| t.as_str());
                    let name = field.rsplit('.').next().unwrap_or_default();
                    out.push_str(&split_camel(name).to_uppercase());
                }
            }
        }
        out
    }
}

fn split_camel(name: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = name.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
        if i > 0 && c.is_uppercase() && (chars[i - 1].is_lowercase() || next_lower) {
            out.push(' ');
        }
        out.push(*c);
    }
    out
}

/// Splits an action into words, keeping quoted strings together (their quotes removed, marked by a leading `"`).
fn tokenize(inner: &str, format: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut chars = inner.trim().chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '"' | '`' => {
                let mut s = String::from('"');
                let mut closed = false;
                while let Some(d) = chars.next() {
                    match d {
                        '\\' if c == '"' => s.extend(chars.next()),
                        d if d == c => {
                            closed = true;
                            break;
                        }
                        d => s.push(d),
                    }
                }
                if !closed {
                    bail!("--format {format:?}: unterminated string");
                }
                out.push(s);
            }
            '|' => out.push("|".into()),
            c => {
                let mut s = String::from(c);
                while let Some(&d) = chars.peek() {
                    if d.is_whitespace() || d == '|' {
                        break;
                    }
                    s.push(d);
                    chars.next();
                }
                out.push(s);
            }
        }
    }
    if out.is_empty() {
        bail!("--format {format:?}: empty action {{{{}}}}");
    }
    Ok(out)
}

/// Evaluates one action: a command, optionally piped into functions.
fn eval(tokens: &[String], data: &Value) -> Result<Value> {
    let mut value: Option<Value> = None;
    for command in tokens.split(|t| t == "|") {
        let mut args: Vec<Value> = Vec::new();
        let (name, rest) = command.split_first().ok_or_else(|| anyhow::anyhow!("empty pipeline stage"))?;
        for a in rest {
            args.push(operand(a, data)?);
        }
        if let Some(v) = value.take() {
            args.push(v);
        }
        value = Some(if name.starts_with('.') || name.starts_with('"') {
            if !args.is_empty() {
                bail!("{name} is not a function");
            }
            operand(name, data)?
        } else {
            call(name, &args)?
        });
    }
    Ok(value.unwrap_or(Value::Null))
}

fn operand(token: &str, data: &Value) -> Result<Value> {
    if let Some(s) = token.strip_prefix('"') {
        return Ok(Value::String(s.to_string()));
    }
    if token == "." {
        return Ok(data.clone());
    }
    if let Some(path) = token.strip_prefix('.') {
        let mut v = data;
        for field in path.split('.') {
            match v.get(field) {
                Some(next) => v = next,
                None => return Ok(Value::Null),
            }
        }
        return Ok(v.clone());
    }
    if let Ok(n) = token.parse::<i64>() {
        return Ok(Value::from(n));
    }
    bail!(
        "{token:?} is not supported in --format (fields start with '.', e.g. {{{{.Id}}}}; range, if and variables are not supported)"
    )
}

fn call(name: &str, args: &[Value]) -> Result<Value> {
    let one = || -> Result<&Value> {
        match args {
            [v] => Ok(v),
            _ => bail!("{name} takes one argument"),
        }
    };
    Ok(match name {
        "json" => Value::String(serde_json::to_string(one()?)?),
        "upper" => Value::String(display(one()?).to_uppercase()),
        "lower" => Value::String(display(one()?).to_lowercase()),
        "title" => {
            let s = display(one()?);
            let mut c = s.chars();
            Value::String(c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default())
        }
        "println" => Value::String(format!("{}\n", display(one()?))),
        "len" => Value::from(match one()? {
            Value::Array(a) => a.len(),
            Value::Object(o) => o.len(),
            Value::String(s) => s.len(),
            Value::Null => 0,
            other => bail!("len of {other}"),
        }),
        "index" => {
            let (first, keys) = args.split_first().ok_or_else(|| anyhow::anyhow!("index needs arguments"))?;
            let mut v = first.clone();
            for k in keys {
                v = match (&v, k) {
                    (Value::Object(o), Value::String(k)) => o.get(k).cloned().unwrap_or(Value::Null),
                    (Value::Array(a), Value::Number(n)) => {
                        n.as_u64().and_then(|i| a.get(i as usize)).cloned().unwrap_or(Value::Null)
                    }
                    _ => Value::Null,
                };
            }
            v
        }
        "join" => match args {
            [Value::Array(a), Value::String(sep)] => Value::String(a.iter().map(display).collect::<Vec<_>>().join(sep)),
            [Value::Null, Value::String(_)] => Value::String(String::new()),
            _ => bail!("join takes a list and a separator"),
        },
        other => bail!(
            "function {other:?} is not supported in --format (json, index, join, upper, lower, title, len, println)"
        ),
    })
}

/// A value as Go's `fmt.Print` shows it.
pub fn display(v: &Value) -> String {
    match v {
        Value::Null => "<no value>".into(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Array(a) => format!("[{}]", a.iter().map(display).collect::<Vec<_>>().join(" ")),
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            let items: Vec<String> = keys.iter().map(|k| format!("{k}:{}", display(&o[*k]))).collect();
            format!("map[{}]", items.join(" "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(format: &str, data: &Value) -> String {
        Template::parse(format).expect(format).render(data).expect(format)
    }

    #[test]
    fn fields_functions_and_go_display() {
        let d =
            json!({"Id": "sha256:ab", "Config": {"Labels": {"b": "2", "a": "1"}, "Env": ["A=1", "B=2"]}, "Size": 10});
        assert_eq!(render("{{.Id}}", &d), "sha256:ab");
        assert_eq!(render("id={{ .Id }} size={{.Size}}", &d), "id=sha256:ab size=10");
        assert_eq!(render("{{.Config.Labels}}", &d), "map[a:1 b:2]");
        assert_eq!(render("{{.Config.Env}}", &d), "[A=1 B=2]");
        assert_eq!(render(r#"{{index .Config.Labels "b"}}"#, &d), "2");
        assert_eq!(render(r#"{{join .Config.Env ","}}"#, &d), "A=1,B=2");
        assert_eq!(render("{{json .Config.Env}}", &d), r#"["A=1","B=2"]"#);
        assert_eq!(render("{{.Config.Env | json}}", &d), r#"["A=1","B=2"]"#);
        assert_eq!(render("{{.Missing}}", &d), "<no value>");
        assert_eq!(render("a\\tb {{- .Size -}} \n", &d), "a\tb10");
        assert_eq!(render("{{len .Config.Env}}", &d), "2");
    }

    #[test]
    fn tables_and_unsupported_forms() {
        let t = Template::parse("table {{.Repository}}\\t{{.CreatedAt}}").unwrap();
        assert!(t.table);
        assert_eq!(t.header(), "REPOSITORY\tCREATED AT");
        for bad in ["{{range .X}}{{end}}", "{{if .X}}", "{{.X", "{{}}", "{{$x := 1}}"] {
            let r = Template::parse(bad).and_then(|t| t.render(&json!({})));
            assert!(r.is_err(), "{bad}");
        }
    }
}
