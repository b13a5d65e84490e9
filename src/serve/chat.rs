//! Chat messages to a prompt. The built-in template is plain text a base GPT-2 can follow:
//! one `role: content` line per message, then `assistant:` for the reply, which ends where the
//! model starts the user's next line. `--chat_template=FILE` replaces the per-message pattern:
//! the file holds it with `{role}` and `{content}` in it (e.g. `<|{role}|>\n{content}\n`).

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;

#[derive(Clone, Debug)]
pub struct ChatTemplate {
    /// The pattern of one message, with `{role}` before `{content}`.
    pattern: String,
}

impl Default for ChatTemplate {
    fn default() -> Self {
        ChatTemplate {
            pattern: "{role}: {content}\n".into(),
        }
    }
}

impl ChatTemplate {
    pub fn load(path: &Path) -> Result<ChatTemplate> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--chat_template={}: cannot read the file", path.display()))?;
        Self::new(&text).with_context(|| format!("--chat_template={}", path.display()))
    }

    pub fn new(pattern: &str) -> Result<ChatTemplate> {
        match (pattern.find("{role}"), pattern.find("{content}")) {
            (Some(r), Some(c)) if r < c => Ok(ChatTemplate {
                pattern: pattern.to_string(),
            }),
            _ => bail!("the template must hold {{role}} and then {{content}}, e.g. \"{{role}}: {{content}}\\n\""),
        }
    }

    fn message(&self, role: &str, content: &str) -> String {
        // Split first: a message's content may itself hold "{role}".
        let (head, tail) = self
            .pattern
            .split_at(self.pattern.find("{content}").unwrap_or(0));
        let tail = &tail["{content}".len()..];
        format!("{}{content}{tail}", head.replace("{role}", role))
    }

    /// The prompt of `messages` (an array of `{"role", "content"}`), and the stop string that
    /// ends the reply where the next user message would begin.
    pub fn render(&self, messages: Option<&Value>) -> Result<(String, Vec<String>), String> {
        let Some(Value::Array(messages)) = messages else {
            return Err("messages must be an array of {\"role\", \"content\"} objects".into());
        };
        if messages.is_empty() {
            return Err("messages must not be empty".into());
        }
        let mut prompt = String::new();
        for (i, m) in messages.iter().enumerate() {
            let role = m.get("role").and_then(Value::as_str);
            let content = m.get("content").and_then(Value::as_str);
            let extra = m.as_object().and_then(|o| {
                o.keys()
                    .find(|k| !["role", "content", "name"].contains(&k.as_str()))
            });
            match (role, content, extra) {
                (Some(r @ ("system" | "user" | "assistant" | "developer")), Some(c), None) => {
                    prompt.push_str(&self.message(r, c))
                }
                (_, _, Some(k)) => return Err(format!("messages[{i}]: unknown field '{k}'")),
                (Some(r), Some(_), None) => {
                    return Err(format!(
                        "messages[{i}]: role '{r}' is not system, user or assistant"
                    ))
                }
                _ => return Err(format!("messages[{i}] needs a role and a string content")),
            }
        }
        // The reply's opening: the pattern up to {content}, without trailing whitespace (a
        // BPE tokenizer writes the space with the next word).
        let opening = self.message("assistant", "");
        let opening = &opening[..opening.len() - self.suffix().len()];
        prompt.push_str(opening.trim_end());
        let next_user = format!("{}{}", self.suffix(), self.message("user", ""));
        let stop = next_user[..next_user.len() - self.suffix().len()].trim_end();
        Ok((
            prompt,
            vec![stop.to_string()]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect(),
        ))
    }

    /// What follows `{content}` in the pattern.
    fn suffix(&self) -> &str {
        let c = self.pattern.find("{content}").unwrap_or(0);
        &self.pattern[c + "{content}".len()..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_built_in_template_writes_role_lines_and_stops_at_the_next_user_line() {
        let m = json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi {role}"}]);
        let (p, stop) = ChatTemplate::default().render(Some(&m)).unwrap();
        assert_eq!(p, "system: Be brief.\nuser: Hi {role}\nassistant:");
        assert_eq!(stop, ["\nuser:"]);
    }

    #[test]
    fn a_custom_pattern_is_used_and_bad_ones_are_refused() {
        let t = ChatTemplate::new("<|{role}|>\n{content}<|end|>\n").unwrap();
        let m = json!([{"role": "user", "content": "2+2?"}]);
        let (p, stop) = t.render(Some(&m)).unwrap();
        assert_eq!(p, "<|user|>\n2+2?<|end|>\n<|assistant|>");
        assert_eq!(stop, ["<|end|>\n<|user|>"]);
        assert!(ChatTemplate::new("{content} by {role}").is_err());
        assert!(ChatTemplate::default()
            .render(Some(&json!([{"role": "bot", "content": "x"}])))
            .is_err());
    }
}
