// Drives a hub with @scramjet/api-client 0.26.1, unmodified, and prints what it saw as JSON.
// Usage: node api_client_flow.js API_URL LIFECYCLE_TAR EVENTS_TAR FOREVER_TAR
"use strict";
const fs = require("fs");
const { HostClient, SequenceClient } = require("@scramjet/api-client");

const [apiUrl, lifecyclePkg, eventsPkg, foreverPkg] = process.argv.slice(2);

async function text(streamPromise) {
    const stream = await streamPromise;
    let out = "";
    for await (const chunk of stream) out += chunk.toString();
    return out;
}

// Progress on stderr: when the flow hangs, the test's failure says where.
const step = (what) => process.stderr.write(`step: ${what}\n`);

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitStatus(inst, wanted) {
    for (let i = 0; i < 200; i++) {
        const info = await inst.getInfo();
        if (wanted.includes(info.status)) return info;
        await sleep(100);
    }
    throw new Error(`instance ${inst.id} never reached ${wanted}`);
}

async function main() {
    const host = new HostClient(apiUrl);
    const seen = {};
    step("version");
    seen.version = await host.getVersion();
    step("load");
    seen.load = await host.getLoadCheck();

    const seq = await host.sendSequence(fs.createReadStream(lifecyclePkg));
    seen.sequenceId = seq.id;
    seen.listed = (await host.listSequences()).map((s) => s.id);
    step("sequence");
    seen.sequence = await host.getSequence(seq.id);
    step("sequenceInfo");
    seen.sequenceInfo = await seq.getInfo();

    const inst = await seq.start({ appConfig: { from: "api-client" }, args: [3000, 10] });
    seen.instanceId = inst.id;
    step("output");
    seen.output = await text(inst.getStream("output"));
    step("info");
    seen.info = await waitStatus(inst, ["completed", "errored"]);
    step("instanceInfo");
    seen.instanceInfo = await host.getInstanceInfo(inst.id);
    step("sequenceInstances");
    seen.sequenceInstances = await seq.listInstances();
    seen.instances = (await host.listInstances()).map((i) => i.id);

    const events = await host.sendSequence(fs.readFileSync(eventsPkg));
    const ev = await events.start({ appConfig: {}, args: [] });
    step("ready");
    seen.ready = await ev.getEvent("ready");
    step("eventAnswer");
    seen.eventAnswer = await ev.sendEvent("ping", "hi");
    step("pong");
    seen.pong = await ev.getEvent("pong");
    // The client sends application/octet-stream unless told; the sequence reads text lines.
    await ev.sendInput("one\ntwo\n", {}, { type: "text/plain", end: true });
    step("echo");
    seen.echo = await text(ev.getStream("output"));
    step("stdout");
    seen.stdout = await text(ev.getStream("stdout"));

    const forever = await host.sendSequence(fs.readFileSync(foreverPkg));
    const stopped = await forever.start({ appConfig: {}, args: [] });
    await waitStatus(stopped, ["running"]);
    step("health");
    seen.health = await stopped.getHealth();
    const stopStarted = Date.now();
    step("stopAnswer");
    seen.stopAnswer = await stopped.stop(1000, false);
    seen.stopMs = Date.now() - stopStarted;
    step("stopped");
    seen.stopped = await waitStatus(stopped, ["completed", "errored"]);

    const killed = await forever.start({ appConfig: {}, args: [] });
    await waitStatus(killed, ["running"]);
    step("killAnswer");
    seen.killAnswer = await killed.kill({ removeImmediately: false });
    step("killed");
    seen.killed = await waitStatus(killed, ["completed", "errored"]);

    const busy = await forever.start({ appConfig: {}, args: [] });
    await waitStatus(busy, ["running"]);
    try {
        await host.deleteSequence(forever.id);
        seen.deleteInUse = "accepted";
    } catch (err) {
        seen.deleteInUse = { status: err.status, code: err.code };
    }
    await busy.kill();
    await waitStatus(busy, ["completed", "errored"]);
    step("deleted");
    seen.deleted = await host.deleteSequence(forever.id);

    try {
        await SequenceClient.from("no-such-sequence", host).start({});
        seen.missingStart = "accepted";
    } catch (err) {
        seen.missingStart = { message: err.message };
    }
    process.stdout.write(JSON.stringify(seen));
}

main().catch((err) => {
    process.stderr.write(`${err && err.stack ? err.stack : err}\n${JSON.stringify(err)}\n`);
    process.exit(1);
});
