//! Server-sent events, as the OpenAI and Anthropic streaming APIs send them:
//! `event:` and `data:` lines, events separated by a blank line.

/// One event: its `event:` name (empty when absent) and its joined `data:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub name: String,
    pub data: String,
}

/// Feeds bytes in as they arrive and yields complete events.
#[derive(Default)]
pub struct Parser {
    buffer: Vec<u8>,
    name: String,
    data: Vec<String>,
}

impl Parser {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(newline) = self.buffer.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buffer.drain(..=newline).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            if let Some(event) = self.line(&line) {
                events.push(event);
            }
        }
        events
    }

    /// Whatever is left when the stream ends without a final blank line.
    pub fn finish(&mut self) -> Option<Event> {
        if !self.buffer.is_empty() {
            let rest = String::from_utf8_lossy(&std::mem::take(&mut self.buffer)).into_owned();
            if let Some(event) = self.line(rest.trim_end_matches('\r')) {
                return Some(event);
            }
        }
        self.dispatch()
    }

    fn line(&mut self, line: &str) -> Option<Event> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.name = value.to_string(),
            "data" => self.data.push(value.to_string()),
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<Event> {
        let name = std::mem::take(&mut self.name);
        if self.data.is_empty() {
            return None;
        }
        let data = std::mem::take(&mut self.data).join("\n");
        Some(Event { name, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks() {
        let mut parser = Parser::default();
        assert!(parser.push(b"event: content_block_delta\r\nda").is_empty());
        let events = parser.push(b"ta: {\"a\":1}\r\n\r\n: keep-alive\n\ndata: [DONE]\n\n");
        assert_eq!(
            events,
            vec![
                Event {
                    name: "content_block_delta".to_string(),
                    data: "{\"a\":1}".to_string()
                },
                Event {
                    name: String::new(),
                    data: "[DONE]".to_string()
                }
            ]
        );
        assert_eq!(parser.finish(), None);
    }

    #[test]
    fn multi_line_data_and_unterminated_end() {
        let mut parser = Parser::default();
        assert!(parser.push(b"data: a\ndata: b\n").is_empty());
        assert_eq!(parser.finish().unwrap().data, "a\nb");
        let mut parser = Parser::default();
        parser.push(b"data: tail");
        assert_eq!(parser.finish().unwrap().data, "tail");
    }
}
