//! Chat templates: the model's own Jinja template rendered with minijinja in the environment transformers builds
//! for `apply_chat_template` (`transformers/utils/chat_template_utils.py`, `_compile_jinja_template` and
//! `render_jinja_template`), so that the text is byte for byte what transformers renders:
//!
//! - `trim_blocks` and `lstrip_blocks` on, the single trailing newline of a template dropped (Jinja's default);
//! - the `{% generation %}…{% endgeneration %}` block (transformers' assistant-mask extension) renders its body;
//! - `{% break %}` / `{% continue %}` (`jinja2.ext.loopcontrols`);
//! - globals `raise_exception(msg)` (an error with that message) and `strftime_now(fmt)` (the current time, UTC);
//! - the `tojson` filter as transformers overrides it: Python's `json.dumps` (no HTML escaping, `ensure_ascii`
//!   off, `", "`/`": "` separators, `indent`, `separators` and `sort_keys` keyword arguments);
//! - the variables `messages`, `tools` and `documents` (`none` when not given), `add_generation_prompt`, the
//!   special tokens (`bos_token`, `eos_token`) and any extra keyword arguments; messages carrying reasoning under
//!   `reasoning_content`, `thinking` or `reasoning` get it under `thinking` and `reasoning_content` too;
//! - values printed as Python prints them (`None`, `True`, `['a', 1]`, `{'k': 'v'}`, `1.0`), and Python's string
//!   and dict methods (`.strip()`, `.split()`, `.items()`, …) through `minijinja_contrib::pycompat`.
//!
//! Object key order is kept as given (minijinja's `preserve_order`), as Python dicts keep it.

use crate::error::{Error, Result};
use minijinja::value::{Kwargs, ValueKind};
use minijinja::Value;
use serde::{Deserialize, Serialize};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    /// A message with this role (`system`, `user`, `assistant`, …) and text.
    pub fn new(role: &str, content: &str) -> Self {
        Message {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

/// Everything a chat template can see besides the special tokens, in transformers' terms: the conversation
/// (messages as JSON objects, so tool calls and content lists pass through), tool schemas, documents,
/// `add_generation_prompt` and extra keyword arguments (e.g. `enable_thinking`).
#[derive(Debug, Clone, Default)]
pub struct ChatInput {
    messages: Vec<Value>,
    tools: Option<Value>,
    documents: Option<Value>,
    /// With it, the text ends where the assistant's reply begins.
    pub add_generation_prompt: bool,
    extra: Vec<(String, Value)>,
}

impl ChatInput {
    /// Plain role/content messages.
    pub fn new(messages: &[Message], add_generation_prompt: bool) -> Self {
        ChatInput {
            messages: messages.iter().map(Value::from_serialize).collect(),
            add_generation_prompt,
            ..Default::default()
        }
    }

    /// From a JSON object `{"messages": [...], "tools": [...], "documents": [...], "add_generation_prompt": b,
    /// ...}` — the arguments of transformers' `apply_chat_template`; other keys become template variables.
    /// Key order is kept. Errors: not JSON, not an object, or `messages` missing or not a list of objects.
    pub fn from_json(text: &str) -> Result<Self> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| Error::Input(format!("chat input is not valid JSON: {e}")))?;
        if v.kind() != ValueKind::Map {
            return Err(Error::Input("chat input must be a JSON object".into()));
        }
        let mut input = ChatInput::default();
        let keys: Vec<Value> = v.try_iter().map(|it| it.collect()).unwrap_or_default();
        for key in keys {
            let name = key.as_str().unwrap_or_default().to_string();
            let val = v.get_item(&key).unwrap_or_default();
            match name.as_str() {
                "messages" => {
                    let list: Option<Vec<Value>> = val
                        .try_iter()
                        .ok()
                        .filter(|_| val.kind() == ValueKind::Seq)
                        .map(|it| it.collect());
                    let list = list.filter(|l| l.iter().all(|m| m.kind() == ValueKind::Map));
                    input.messages =
                        list.ok_or_else(|| Error::Input("chat input: 'messages' must be a list of objects".into()))?;
                }
                "tools" => input.tools = (!val.is_none()).then_some(val),
                "documents" => input.documents = (!val.is_none()).then_some(val),
                "add_generation_prompt" => input.add_generation_prompt = val.is_true(),
                _ => input.extra.push((name, val)),
            }
        }
        Ok(input)
    }

    /// Tool schemas (JSON objects) the template may list.
    pub fn with_tools(mut self, tools: &[serde_json::Value]) -> Self {
        self.tools = Some(Value::from_serialize(tools));
        self
    }

    /// An extra template variable (transformers passes `apply_chat_template`'s other keyword arguments).
    pub fn with_var(mut self, name: &str, value: impl Serialize) -> Self {
        self.extra.push((name.to_string(), Value::from_serialize(value)));
        self
    }
}

/// A chat template with the special tokens it may refer to.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl ChatTemplate {
    /// A template (Jinja source) and the special tokens' texts it may use as `bos_token` / `eos_token`.
    pub fn new(source: String, bos_token: Option<String>, eos_token: Option<String>) -> Self {
        ChatTemplate {
            source,
            bos_token,
            eos_token,
        }
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Render `messages`; with `add_generation_prompt` the text ends where the assistant's reply begins.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_input(&ChatInput::new(messages, add_generation_prompt))
    }

    /// Render a full [`ChatInput`] as transformers' `apply_chat_template(..., tokenize=False)` does.
    /// Errors: [`Error::Template`] when the template does not parse, or raises (`raise_exception`) or fails while
    /// rendering.
    pub fn render_input(&self, input: &ChatInput) -> Result<String> {
        let env = environment();
        let source = rewrite_generation_blocks(&self.source);
        let tmpl = env
            .template_from_str(&source)
            .map_err(|e| Error::Template(format!("cannot parse: {e}")))?;
        let messages: Vec<Value> = input.messages.iter().map(alias_reasoning_fields).collect();
        let mut ctx: Vec<(String, Value)> = vec![
            ("messages".into(), Value::from(messages)),
            ("tools".into(), input.tools.clone().unwrap_or(Value::from(()))),
            ("documents".into(), input.documents.clone().unwrap_or(Value::from(()))),
            ("add_generation_prompt".into(), Value::from(input.add_generation_prompt)),
        ];
        if let Some(b) = &self.bos_token {
            ctx.push(("bos_token".into(), Value::from(b.as_str())));
        }
        if let Some(e) = &self.eos_token {
            ctx.push(("eos_token".into(), Value::from(e.as_str())));
        }
        ctx.extend(input.extra.iter().cloned());
        let ctx: Value = ctx.into_iter().collect();
        let input_bytes: usize = input.messages.iter().map(|m| m.to_string().len()).sum::<usize>()
            + input.tools.as_ref().map_or(0, |t| t.to_string().len())
            + input.documents.as_ref().map_or(0, |d| d.to_string().len());
        crate::template_bounds::render(&tmpl, ctx, input_bytes)
    }
}

/// transformers copies reasoning found under any of its names to `thinking` (first) and `reasoning_content`.
fn alias_reasoning_fields(message: &Value) -> Value {
    let reasoning = ["reasoning_content", "thinking", "reasoning"]
        .iter()
        .filter_map(|k| message.get_attr(k).ok())
        .find(|v| !v.is_undefined() && !v.is_none());
    let Some(r) = reasoning else {
        return message.clone();
    };
    let mut pairs: Vec<(Value, Value)> = vec![(Value::from("thinking"), r.clone())];
    if let Ok(keys) = message.try_iter() {
        for k in keys {
            if k.as_str() != Some("thinking") && k.as_str() != Some("reasoning_content") {
                let v = message.get_item(&k).unwrap_or_default();
                pairs.push((k, v));
            } else if k.as_str() == Some("thinking") {
                // `{"thinking": r, **message}`: the message's own value wins, in the first position.
                pairs[0].1 = message.get_item(&k).unwrap_or_default();
            }
        }
    }
    pairs.push((Value::from("reasoning_content"), r));
    pairs.into_iter().collect()
}

/// `{% generation %}` / `{% endgeneration %}` become an always-true `if` block with the same whitespace markers,
/// so that trimming around them is what Jinja does around any block tag.
fn rewrite_generation_blocks(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(i) = rest.find("{%") {
        out.push_str(&rest[..i]);
        let tag = &rest[i..];
        let Some(end) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let (open, body) = match inner.chars().next() {
            Some(c @ ('-' | '+')) => (c.to_string(), &inner[1..]),
            _ => (String::new(), inner),
        };
        let (body, close) = match body.chars().last() {
            Some(c @ ('-' | '+')) => (&body[..body.len() - 1], c.to_string()),
            _ => (body, String::new()),
        };
        match body.trim() {
            "generation" => out.push_str(&format!("{{%{open} if true {close}%}}")),
            "endgeneration" => out.push_str(&format!("{{%{open} endif {close}%}}")),
            _ => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

/// The Jinja environment of transformers' `_compile_jinja_template`.
fn environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_fuel(Some(crate::template_bounds::FUEL));
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_formatter(|out, _state, value| {
        if value.is_safe() || value.kind() == ValueKind::String {
            out.write_str(value.as_str().unwrap_or_default())?;
        } else if value.is_undefined() {
            // Jinja's default Undefined prints nothing.
        } else {
            out.write_str(&py_str(value))?;
        }
        Ok(())
    });
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_function("strftime_now", |fmt: String| -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        strftime(&fmt, now)
    });
    env.add_filter(
        "tojson",
        |value: Value, kwargs: Kwargs| -> std::result::Result<Value, minijinja::Error> {
            let indent: Option<Value> = kwargs.get("indent")?;
            let separators: Option<Vec<String>> = kwargs.get("separators")?;
            let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
            let _: Option<bool> = kwargs.get("ensure_ascii")?;
            kwargs.assert_all_used()?;
            let indent = match indent {
                None => None,
                Some(v) if v.is_none() => None,
                Some(v) => Some(match v.as_str() {
                    Some(s) => s.to_string(),
                    None => " ".repeat(i64::try_from(v).unwrap_or(0).max(0) as usize),
                }),
            };
            let (item_sep, key_sep) = match separators {
                Some(s) if s.len() == 2 => (s[0].clone(), s[1].clone()),
                _ if indent.is_some() => (",".to_string(), ": ".to_string()),
                _ => (", ".to_string(), ": ".to_string()),
            };
            let mut out = String::new();
            let opts = JsonOpts {
                indent,
                item_sep,
                key_sep,
                sort_keys: sort_keys.unwrap_or(false),
            };
            json_dumps(&value, &opts, 0, &mut out)?;
            Ok(Value::from_safe_string(out))
        },
    );
    env
}

/// Options of Python's `json.dumps`.
struct JsonOpts {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

/// Python's `json.dumps(value, ensure_ascii=False, ...)`.
fn json_dumps(
    value: &Value,
    o: &JsonOpts,
    level: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    let newline = |out: &mut String, level: usize| {
        if let Some(ind) = &o.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    };
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&py_number(value)),
        ValueKind::String => json_string(value.as_str().unwrap_or_default(), out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, level + 1);
                json_dumps(item, o, level + 1, out)?;
            }
            newline(out, level);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = value.try_iter()?.collect();
            if o.sort_keys {
                keys.sort();
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, level + 1);
                match k.as_str() {
                    Some(s) => json_string(s, out),
                    None => json_string(&py_str(k), out),
                }
                out.push_str(&o.key_sep);
                json_dumps(&value.get_item(k)?, o, level + 1, out)?;
            }
            newline(out, level);
            out.push('}');
        }
        _ => json_string(&value.to_string(), out),
    }
    Ok(())
}

/// A JSON string as Python writes it with `ensure_ascii=False`.
fn json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A number as Python's `repr`: integers as digits, floats with a `.0` or in Python's exponent form.
fn py_number(v: &Value) -> String {
    if v.is_integer() {
        return v.to_string();
    }
    let Ok(x) = f64::try_from(v.clone()) else {
        return v.to_string();
    };
    py_float(x)
}

/// Python's `repr(float)`: the shortest round-trip digits; positional for 1e-4 ≤ |x| < 1e16, else `1e+16` form.
fn py_float(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    let a = x.abs();
    if a == 0.0 || (1e-4..1e16).contains(&a) {
        let s = format!("{x}");
        return if s.contains('.') { s } else { format!("{s}.0") };
    }
    let s = format!("{x:e}"); // e.g. 1e16, 1.5e-5
    let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    format!("{mant}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
}

/// `str(value)` in Python: what Jinja prints for a value.
fn py_str(v: &Value) -> String {
    match v.kind() {
        ValueKind::String => v.as_str().unwrap_or_default().to_string(),
        _ => py_repr(v),
    }
}

/// `repr(value)` in Python, for the values a chat template sees.
fn py_repr(v: &Value) -> String {
    match v.kind() {
        ValueKind::Undefined => String::new(),
        ValueKind::None => "None".into(),
        ValueKind::Bool => (if v.is_true() { "True" } else { "False" }).into(),
        ValueKind::Number => py_number(v),
        ValueKind::String => py_str_repr(v.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<String> = v
                .try_iter()
                .map(|it| it.map(|x| py_repr(&x)).collect())
                .unwrap_or_default();
            format!("[{}]", items.join(", "))
        }
        ValueKind::Map => {
            let items: Vec<String> = v
                .try_iter()
                .map(|it| {
                    it.map(|k| format!("{}: {}", py_repr(&k), py_repr(&v.get_item(&k).unwrap_or_default())))
                        .collect()
                })
                .unwrap_or_default();
            format!("{{{}}}", items.join(", "))
        }
        _ => v.to_string(),
    }
}

/// Python's `repr(str)`: single quotes unless the text has a single quote and no double quote.
fn py_str_repr(s: &str) -> String {
    let q = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::from(q);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == q => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push(q);
    out
}

/// C's `strftime` (as Python's `datetime.strftime` calls it, C locale) for the UTC time `unix_secs`: `%Y %y %m
/// %d %e %j %H %I %M %S %p %A %a %B %b %h %F %T %D %R %c %x %X %%` and glibc's `%-d %-m %-H %-I %-M %-S %-j`.
/// Other directives are kept as typed.
pub fn strftime(fmt: &str, unix_secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (secs / 3600, secs / 60 % 60, secs % 60);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday (index 3 from Monday)
    let yday = days - days_from_civil(y, 1, 1) + 1;
    let h12 = if hh % 12 == 0 { 12 } else { hh % 12 };
    let month = MONTHS[(m - 1) as usize];
    let day = DAYS[weekday];
    let mut out = String::new();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let pad = if chars.peek() == Some(&'-') {
            chars.next();
            false
        } else {
            true
        };
        let num = |n: i64, w: usize| if pad { format!("{n:0w$}") } else { n.to_string() };
        let Some(k) = chars.next() else {
            out.push('%');
            break;
        };
        let s = match k {
            'Y' => y.to_string(),
            'y' => num(y.rem_euclid(100), 2),
            'm' => num(m, 2),
            'd' => num(d, 2),
            'e' => format!("{d:2}"),
            'j' => num(yday, 3),
            'H' => num(hh, 2),
            'I' => num(h12, 2),
            'M' => num(mm, 2),
            'S' => num(ss, 2),
            'p' => (if hh < 12 { "AM" } else { "PM" }).into(),
            'A' => day.into(),
            'a' => day[..3].into(),
            'B' => month.into(),
            'b' | 'h' => month[..3].into(),
            'F' => format!("{y}-{m:02}-{d:02}"),
            'T' => format!("{hh:02}:{mm:02}:{ss:02}"),
            'R' => format!("{hh:02}:{mm:02}"),
            'D' | 'x' => format!("{m:02}/{d:02}/{:02}", y.rem_euclid(100)),
            'X' => format!("{hh:02}:{mm:02}:{ss:02}"),
            'c' => format!("{} {} {d:2} {hh:02}:{mm:02}:{ss:02} {y}", &day[..3], &month[..3]),
            '%' => "%".into(),
            other => format!("%{}{other}", if pad { "" } else { "-" }),
        };
        out.push_str(&s);
    }
    out
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// (year, month, day) → days since 1970-01-01.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2's ChatML template, as shipped in its tokenizer config.
    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_default_system_prompt() {
        let t = ChatTemplate::new(CHATML.into(), None, Some("<|im_end|>".into()));
        let out = t.render(&[Message::new("user", "hi")], true).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        let sys = t
            .render(
                &[Message::new("system", "Be brief."), Message::new("user", "hi")],
                false,
            )
            .unwrap();
        assert!(sys.starts_with("<|im_start|>system\nBe brief.<|im_end|>\n"));
        assert!(!sys.ends_with("assistant\n"));
    }

    #[test]
    fn trims_blocks_and_supports_python_methods_and_exceptions() {
        let t = ChatTemplate::new(
            "{% for m in messages %}\n  {% if m.content %}{{ m.content.strip() }}{% endif %}|{% endfor %}{% if messages|length > 1 %}{{ raise_exception('one only') }}{% endif %}".into(),
            None,
            None,
        );
        assert_eq!(t.render(&[Message::new("user", "  x  ")], false).unwrap(), "x|");
        let e = t
            .render(&[Message::new("user", "a"), Message::new("user", "b")], false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("one only"), "{e}");
        let bad = ChatTemplate::new("{% for %}".into(), None, None);
        assert!(bad.render(&[], false).is_err());
    }

    #[test]
    fn generation_tags_keep_their_whitespace_markers() {
        assert_eq!(
            rewrite_generation_blocks("a{% generation %}b{%- endgeneration -%}c"),
            "a{% if true %}b{%- endif -%}c"
        );
        assert_eq!(
            rewrite_generation_blocks("{%+generation+%}{{ x }}{% if y %}"),
            "{%+ if true +%}{{ x }}{% if y %}"
        );
        assert_eq!(rewrite_generation_blocks("{% generations %}{%"), "{% generations %}{%");
    }

    #[test]
    fn python_reprs_and_floats() {
        assert_eq!(py_float(1.0), "1.0");
        assert_eq!(py_float(0.1), "0.1");
        assert_eq!(py_float(1e16), "1e+16");
        assert_eq!(py_float(1.5e-5), "1.5e-05");
        assert_eq!(py_float(-2.5e300), "-2.5e+300");
        assert_eq!(py_str_repr("it's"), "\"it's\"");
        assert_eq!(py_str_repr("a'b\"c"), "'a\\'b\"c'");
    }

    #[test]
    fn strftime_matches_c_on_known_instants() {
        // Reference values from Python: datetime.fromtimestamp(t, timezone.utc).strftime(fmt).
        assert_eq!(strftime("%d %B %Y", 0), "01 January 1970");
        assert_eq!(
            strftime("%Y-%m-%d %H:%M:%S %A %j", 1_709_251_199),
            "2024-02-29 23:59:59 Thursday 060"
        );
        assert_eq!(
            strftime("%-d %b %y, %I:%M %p %a", 1_735_732_800),
            "1 Jan 25, 12:00 PM Wed"
        );
        assert_eq!(strftime("%e|%F|%T|%%|%Q", 951_782_400), "29|2000-02-29|00:00:00|%|%Q");
    }
}
