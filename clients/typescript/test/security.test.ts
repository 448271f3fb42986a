// The TypeScript client's TLS, mutual TLS and bearer-token options against the real Python server.
// .ci/ts-interop.sh starts a second server with --tls-cert/--tls-key/--tls-client-ca and a tokens file,
// makes the certificates at run time, and sets
//   IMAGEGEN_TLS_ADDRESS   host:port of that server (the certificate names 127.0.0.1 and localhost)
//   IMAGEGEN_TLS_DIR       a directory with ca.pem, client.crt, client.key (the client certificate's CN
//                          is "ts-client") and other-ca.pem (a CA that signed nothing of the server's)
//   IMAGEGEN_TLS_TOKEN     a token the tokens file holds (caller "ts-viewer": ListModels only)
// Without them the suite is skipped.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import {
  AuthenticationError,
  ImagegenClient,
  ImagegenError,
  PermissionDeniedError,
} from "../src/index.js";

const ADDRESS = process.env["IMAGEGEN_TLS_ADDRESS"];
const DIR = process.env["IMAGEGEN_TLS_DIR"];
const TOKEN = process.env["IMAGEGEN_TLS_TOKEN"];
const skip = ADDRESS && DIR && TOKEN ? false : "IMAGEGEN_TLS_* not set (run .ci/ts-interop.sh)";

function pem(name: string): Buffer {
  return readFileSync(join(DIR!, name));
}

function client(options: { ca?: string; cert?: boolean; bearerToken?: string }): ImagegenClient {
  return new ImagegenClient({
    address: ADDRESS!,
    timeoutMs: 20_000,
    ca: pem(options.ca ?? "ca.pem"),
    ...(options.cert ? { cert: pem("client.crt"), key: pem("client.key") } : {}),
    ...(options.bearerToken !== undefined ? { bearerToken: options.bearerToken } : {}),
  });
}

async function rejects(c: ImagegenClient, call: (c: ImagegenClient) => Promise<unknown>, cls: Function): Promise<void> {
  try {
    await assert.rejects(call(c), (err: unknown) => {
      assert.ok(err instanceof cls, `expected ${cls.name}, got ${String(err)}`);
      return true;
    });
  } finally {
    c.close();
  }
}

describe("TLS, mutual TLS and bearer tokens", { skip }, () => {
  it("a client certificate from the client CA names the caller (ts-client: every method)", async () => {
    const c = client({ cert: true });
    try {
      const models = await c.listModels();
      assert.ok(models.length > 0);
      const gen = await c.generate({ prompt: "a lighthouse", aspectRatio: "1:1" });
      assert.ok(gen.image && gen.image.data.length > 0);
    } finally {
      c.close();
    }
  });

  it("a bearer token, when sent, decides: ts-viewer may list models but not generate", async () => {
    const c = client({ cert: true, bearerToken: TOKEN! });
    try {
      assert.ok((await c.listModels()).length > 0);
    } finally {
      c.close();
    }
    await rejects(client({ cert: true, bearerToken: TOKEN! }), (x) => x.generate({ prompt: "a fox" }), PermissionDeniedError);
  });

  it("an unknown token is UNAUTHENTICATED", async () => {
    await rejects(client({ cert: true, bearerToken: "not-a-token" }), (x) => x.listModels(), AuthenticationError);
  });

  it("no client certificate, or trusting the wrong CA: no connection", async () => {
    // Under TLS 1.3 the server refuses a missing client certificate after the client's side of the
    // handshake is done, and Node reports the stream it had opened as closed with CANCEL: the call
    // fails as CANCELLED or UNAVAILABLE depending on timing, never with an answer.
    await rejects(client({}), (x) => x.listModels(), ImagegenError);
    // A server certificate the client cannot verify: Connect reports Node's TLS error as INTERNAL.
    const wrongCa = client({ ca: "other-ca.pem", cert: true });
    try {
      await assert.rejects(wrongCa.listModels(), (err: unknown) => {
        assert.ok(err instanceof ImagegenError && /certificate/.test(err.message), String(err));
        return true;
      });
    } finally {
      wrongCa.close();
    }
  });

  it("cert without key is refused at construction", () => {
    assert.throws(
      () => new ImagegenClient({ address: ADDRESS!, ca: pem("ca.pem"), cert: pem("client.crt") }),
      /cert and key go together/,
    );
  });
});
