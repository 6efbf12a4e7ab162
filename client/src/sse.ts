/**
 * A Server-Sent Events reader over `fetch`, for the chat client's fallback: unlike
 * `EventSource` it can send an `Authorization` header, runs in Node without a polyfill,
 * and lets the caller decide how to reconnect.
 *
 * @module tandem-client/sse
 */

/** One event: its `event:` name (default `message`), `data:` text and `id:`, if any. */
export interface SseEvent {
  event: string;
  data: string;
  id?: string;
}

/** A response that was not the event stream: its status and the server's reason. */
export class SseHttpError extends Error {
  constructor(
    readonly status: number,
    reason: string,
  ) {
    super(`event stream refused: ${status} ${reason}`);
    this.name = 'SseHttpError';
  }
}

/**
 * Opens `url` as an event stream and calls `onEvent` for each event until the stream
 * ends (resolves) or fails (rejects); `signal` aborts it.
 */
export async function readEventStream(
  url: string,
  headers: Record<string, string>,
  onEvent: (event: SseEvent) => void,
  signal: AbortSignal,
): Promise<void> {
  const response = await fetch(url, { headers: { accept: 'text/event-stream', ...headers }, signal });
  if (!response.ok || !response.body) {
    const text = await response.text().catch(() => '');
    let reason = text;
    try {
      reason = (JSON.parse(text) as { error?: string }).error ?? text;
    } catch {
      // not JSON: keep the text
    }
    throw new SseHttpError(response.status, reason);
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let event: SseEvent = { event: 'message', data: '' };
  let hasData = false;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let newline: number;
    while ((newline = buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = buffer.slice(0, newline);
      buffer = buffer.slice(newline + (buffer.startsWith('\r\n', newline) ? 2 : 1));
      if (line === '') {
        if (hasData) onEvent(event);
        event = { event: 'message', data: '' };
        hasData = false;
        continue;
      }
      if (line.startsWith(':')) continue; // a comment (keepalive)
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'event') event.event = value;
      else if (field === 'id') event.id = value;
      else if (field === 'data') {
        event.data = hasData ? `${event.data}\n${value}` : value;
        hasData = true;
      }
    }
  }
}
