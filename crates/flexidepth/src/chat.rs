//! Chat templates: the model's own Jinja template rendered with minijinja, configured like transformers'
//! (`trim_blocks`, `lstrip_blocks`, `raise_exception`, Python string methods).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Message {
            role: role.to_string(),
            content: content.to_string(),
        }
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
    pub fn new(source: String, bos_token: Option<String>, eos_token: Option<String>) -> Self {
        ChatTemplate {
            source,
            bos_token,
            eos_token,
        }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Render `messages`; with `add_generation_prompt` the text ends where the assistant's reply begins.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", |fmt: String| -> String {
            // Templates use this for a "today" line; a fixed date keeps outputs reproducible.
            fmt.replace("%d", "01")
                .replace("%b", "Jan")
                .replace("%B", "January")
                .replace("%Y", "2025")
        });
        env.add_template("chat", &self.source)
            .map_err(|e| Error::Template(format!("cannot parse: {e}")))?;
        let tmpl = env.get_template("chat").map_err(|e| Error::Template(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        })
        .map_err(|e| Error::Template(format!("cannot render: {e}")))
    }
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
}
