package dev.edgekto.demo;

import android.content.Context;
import dev.edgekto.core.BundleVerifier;
import dev.edgekto.core.BundleVerifier.BundleException;
import dev.edgekto.core.BundleZip;
import dev.edgekto.core.ChatEngine;
import dev.edgekto.core.ChatMl;
import dev.edgekto.core.Json;
import dev.edgekto.llama.LlamaChat;
import dev.edgekto.llama.LlamaEngine;
import java.io.File;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;

/**
 * Bundles on the phone: {@code <external files>/bundles/<name>/}, filled by {@code adb push} or by
 * importing a zip. Opening one verifies the manifest and every file's sha256 first, then checks
 * that this app formats the golden prompts into the token ids training used.
 */
final class BundleRepository {
    /** A verified bundle with its engine, ready to chat. */
    static final class Loaded {
        final ChatEngine engine;
        final String systemPrompt; // what the student was trained with (golden rows), or null
        final String modelLabel;
        final String manifestSha256; // logged with every answer: which model the thumbs are about
        final long verifyMillis, loadMillis;

        Loaded(ChatEngine engine, String systemPrompt, String modelLabel, String manifestSha256, long verifyMillis,
                long loadMillis) {
            this.engine = engine;
            this.systemPrompt = systemPrompt;
            this.modelLabel = modelLabel;
            this.manifestSha256 = manifestSha256;
            this.verifyMillis = verifyMillis;
            this.loadMillis = loadMillis;
        }
    }

    private BundleRepository() {}

    static File root(Context ctx) {
        File r = new File(ctx.getExternalFilesDir(null), "bundles");
        r.mkdirs();
        return r;
    }

    static List<String> names(Context ctx) {
        List<String> out = new ArrayList<>();
        File[] dirs = root(ctx).listFiles();
        if (dirs != null) {
            Arrays.sort(dirs);
            for (File d : dirs) if (new File(d, "manifest.json").isFile()) out.add(d.getName());
        }
        return out;
    }

    /** Unpack and verify a picked zip; a bundle that fails verification is removed again. */
    static File importZip(Context ctx, InputStream zip, String name) throws IOException, BundleException {
        File dest = new File(root(ctx), name.replaceAll("[^A-Za-z0-9._-]", "_"));
        BundleZip.extract(zip, dest);
        try {
            new BundleVerifier(dest).verifyAll();
        } catch (BundleException | IOException | RuntimeException e) {
            deleteTree(dest);
            throw e;
        }
        return dest;
    }

    /** Artifact entries of the manifest: {path, backend, quant}. */
    @SuppressWarnings("unchecked")
    static List<Map<String, Object>> artifacts(BundleVerifier v) {
        List<Map<String, Object>> out = new ArrayList<>();
        for (Object o : (List<Object>) v.manifest.get("artifacts")) out.add((Map<String, Object>) o);
        return out;
    }

    @SuppressWarnings("unchecked")
    static Loaded open(Context ctx, Settings s) throws Exception {
        String name = s.bundle();
        List<String> all = names(ctx);
        if (name == null || !all.contains(name)) {
            if (all.isEmpty()) throw new BundleException(ctx.getString(R.string.no_bundle));
            name = all.get(0);
        }
        File dir = new File(root(ctx), name);
        long t0 = System.nanoTime();
        BundleVerifier v = new BundleVerifier(dir);
        v.verifyAll();
        long verifyMs = (System.nanoTime() - t0) / 1_000_000;

        Map<String, Object> art = pickArtifact(v, s.artifact());
        String backend = (String) art.get("backend");
        File path = new File(dir, (String) art.get("path"));
        Map<String, Object> tok = (Map<String, Object>) v.manifest.get("tokenizer");
        String template = (String) tok.get("chat_template");
        Map<String, Object> gen = (Map<String, Object>) v.manifest.get("generation");
        int nCtx = gen != null && gen.get("n_ctx") instanceof Long ? ((Long) gen.get("n_ctx")).intValue() : 2048;
        String label = name + " · " + art.get("quant");
        List<Map<String, Object>> golden = golden(dir);

        long t1 = System.nanoTime();
        ChatEngine engine;
        if ("llama.cpp".equals(backend)) {
            LlamaChat chat = new LlamaChat(new LlamaEngine(path, nCtx, s.threads()), template, label);
            try {
                checkPromptIds(chat, golden);
            } catch (BundleException e) {
                chat.close();
                throw e;
            }
            engine = chat;
        } else if ("onnxruntime-genai".equals(backend)) {
            if (!BuildConfig.WITH_ONNX)
                throw new BundleException("this build has no ONNX engine: put the onnxruntime-genai Android AAR in app/libs and rebuild, or pick the GGUF artifact in Settings");
            engine = (ChatEngine) Class.forName("dev.edgekto.demo.onnx.OnnxChat")
                    .getConstructor(File.class, String.class, String.class).newInstance(path, template, label);
        } else {
            throw new BundleException(dir + "/manifest.json: artifact " + art.get("path") + " has backend '" + backend + "', which this app cannot run");
        }
        long loadMs = (System.nanoTime() - t1) / 1_000_000;
        String digest = BundleVerifier.sha256(new File(dir, "manifest.json"));
        return new Loaded(engine, systemPrompt(golden), label, digest, verifyMs, loadMs);
    }

    private static Map<String, Object> pickArtifact(BundleVerifier v, String wanted) throws BundleException {
        List<Map<String, Object>> arts = artifacts(v);
        for (Map<String, Object> a : arts) if (a.get("path").equals(wanted)) return a;
        for (Map<String, Object> a : arts) if ("llama.cpp".equals(a.get("backend"))) return a; // default: the GGUF
        return arts.get(0);
    }

    @SuppressWarnings("unchecked")
    private static List<Map<String, Object>> golden(File dir) throws IOException {
        List<Map<String, Object>> rows = new ArrayList<>();
        File f = new File(dir, "golden.jsonl");
        if (!f.isFile()) return rows;
        for (String line : Files.readAllLines(f.toPath(), StandardCharsets.UTF_8))
            if (!line.trim().isEmpty()) rows.add((Map<String, Object>) Json.parse(line));
        return rows;
    }

    /** The system message of the golden prompts: the student learned to answer under it. */
    @SuppressWarnings("unchecked")
    private static String systemPrompt(List<Map<String, Object>> golden) {
        if (golden.isEmpty()) return null;
        List<Object> msgs = (List<Object>) golden.get(0).get("messages");
        Map<String, Object> first = msgs.isEmpty() ? null : (Map<String, Object>) msgs.get(0);
        return first != null && "system".equals(first.get("role")) ? (String) first.get("content") : null;
    }

    /** Refuse to chat when this app's prompt formatting disagrees with the ids training used. */
    @SuppressWarnings("unchecked")
    private static void checkPromptIds(LlamaChat chat, List<Map<String, Object>> golden) throws BundleException {
        for (Map<String, Object> row : golden) {
            List<String[]> msgs = ChatMl.messagesFromJson(row.get("messages"));
            List<Object> want = (List<Object>) row.get("prompt_ids");
            int[] got = chat.promptIds(msgs);
            int i = 0;
            while (i < got.length && i < want.size() && ((Long) want.get(i)).intValue() == got[i]) i++;
            if (i != got.length || i != want.size())
                throw new BundleException("golden prompt '" + row.get("id") + "': token ids differ from training at position " + i
                        + " (" + got.length + " ids here, " + want.size() + " in training); the chat template or tokenizer "
                        + "differs and answers would be off");
        }
    }

    static void deleteTree(File f) {
        File[] kids = f.listFiles();
        if (kids != null) for (File k : kids) deleteTree(k);
        f.delete();
    }
}
