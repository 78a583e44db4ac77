// Drives a hub's topics with @scramjet/api-client 0.26.1, unmodified: getNamedData follows a
// topic while sendNamedData sends to it and then ends it; prints what it saw as JSON.
// Usage: node topics_flow.js API_URL TOPIC
"use strict";
const { Readable } = require("stream");
const { HostClient } = require("@scramjet/api-client");

const [apiUrl, name] = process.argv.slice(2);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function text(streamPromise) {
    const stream = await streamPromise;
    let out = "";
    for await (const chunk of stream) out += chunk.toString();
    return out;
}

async function main() {
    const host = new HostClient(apiUrl);
    const seen = {};
    const reading = text(host.getNamedData(name));
    // A reader that comes after an end starts after it: send once this one reads.
    for (let i = 0; i < 200; i++) {
        const found = (await host.getTopics()).find((t) => t.topic === name);
        if (found && found.consumers > 0) break;
        await sleep(50);
    }
    const lines = Readable.from(['{"a": 1}\n', '{"a": 2}\n']);
    seen.sent = JSON.parse(await text(host.sendNamedData(name, lines, {}, "application/x-ndjson")));
    seen.ended = JSON.parse(
        await text(host.sendNamedData(name, '{"a": 3}\n', {}, "application/x-ndjson", true))
    );
    seen.data = await reading;
    seen.topics = await host.getTopics();
    process.stdout.write(JSON.stringify(seen));
}

main().catch((err) => {
    process.stderr.write(`${err.stack || err}\n${JSON.stringify(err.body || "")}\n`);
    process.exit(1);
});
