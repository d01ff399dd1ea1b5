"""Any OpenAI client talks to the fabric. Start one first: `.venv/bin/fabric up`."""

import sys

from openai import OpenAI

if __name__ == "__main__":
    base_url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000/v1"
    client = OpenAI(base_url=base_url, api_key="fabric-local")
    raw = client.chat.completions.with_raw_response.create(
        model="tiny-llama", max_tokens=32,
        messages=[{"role": "user", "content": "Plan the next step of the migration."}])
    resp = raw.parse()
    print(f"served by region={raw.headers.get('x-fabric-region')} site={raw.headers.get('x-fabric-site')}")
    print(f"usage: {resp.usage.prompt_tokens} in, {resp.usage.completion_tokens} out")
    print(resp.choices[0].message.content)
