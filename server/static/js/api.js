// The API client: same-origin requests carrying this tab's API key, asking for a key on a 401.

const KEY = "nomoat.key";

export class Api {
  // askKey(reason) resolves to a key, or "" when the user declines.
  constructor(askKey) {
    this.askKey = askKey;
    this.key = sessionStorage.getItem(KEY) || "";
  }

  setKey(key) {
    this.key = key;
    sessionStorage.setItem(KEY, key);
  }

  // A fetch Response; a 401 asks for a key and retries until one is accepted or the user declines.
  async fetch(path, { method = "GET", body, signal } = {}) {
    for (;;) {
      const sent = this.key;
      const headers = {};
      if (sent) headers.Authorization = `Bearer ${sent}`;
      const init = { method, headers, signal };
      if (body instanceof FormData) {
        init.body = body; // multipart (an upload): the browser writes its Content-Type and boundary
      } else if (body !== undefined) {
        headers["Content-Type"] = "application/json";
        init.body = JSON.stringify(body);
      }
      const response = await fetch(path, init);
      if (response.status !== 401) return response;
      if (this.key !== sent) continue; // another request got a key meanwhile
      const key = await this.askKey(sent ? "That key was refused." : "");
      if (!key) return response;
      this.setKey(key);
    }
  }

  // The JSON body of a successful answer; an error answer throws its message.
  async json(path, options) {
    const response = await this.fetch(path, options);
    if (!response.ok) throw new Error(await errorMessage(response));
    return response.json();
  }
}

// The message of an error answer in OpenAI's shape, or its status line.
export async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch {
    // not JSON: the status says it
  }
  return `${response.status} ${response.statusText}`.trim();
}
