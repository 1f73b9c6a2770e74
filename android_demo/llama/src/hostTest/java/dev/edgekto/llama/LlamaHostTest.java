package dev.edgekto.llama;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import dev.edgekto.core.BundleVerifier;
import dev.edgekto.core.ChatEngine;
import dev.edgekto.core.ChatMl;
import dev.edgekto.core.Json;
import dev.edgekto.core.Utf8Stream;
import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.junit.AfterClass;
import org.junit.BeforeClass;
import org.junit.Test;

/**
 * The JNI bridge the app ships, run on the host against a real bundle (host_test.sh builds it
 * against llama-cpp-python's libllama and writes the Python runtime's outputs to -Dexpected).
 */
@SuppressWarnings("unchecked")
public class LlamaHostTest {
    static File bundle;
    static Map<String, Object> expected;
    static LlamaEngine engine;
    static LlamaChat chat;

    @BeforeClass
    public static void open() throws Exception {
        bundle = new File(System.getProperty("bundle"));
        BundleVerifier v = new BundleVerifier(bundle);
        v.verifyAll(); // what the app does before loading anything
        expected = (Map<String, Object>) Json.parse(read(new File(System.getProperty("expected"))));
        engine = new LlamaEngine(new File(bundle, (String) expected.get("artifact")), 512, 2);
        String template = (String) ((Map<String, Object>) v.manifest.get("tokenizer")).get("chat_template");
        chat = new LlamaChat(engine, template, "host");
    }

    @AfterClass
    public static void close() {
        if (chat != null) chat.close();
    }

    static String read(File f) throws IOException {
        return new String(Files.readAllBytes(f.toPath()), StandardCharsets.UTF_8);
    }

    static List<Map<String, Object>> cases() {
        List<Map<String, Object>> out = new ArrayList<>();
        for (Object o : (List<Object>) expected.get("cases")) out.add((Map<String, Object>) o);
        assertFalse("no golden rows in the bundle", out.isEmpty());
        return out;
    }

    static List<String[]> messages(Map<String, Object> c) {
        return ChatMl.messagesFromJson(c.get("messages"));
    }

    static int[] ints(Object list) {
        List<Object> l = (List<Object>) list;
        int[] out = new int[l.size()];
        for (int i = 0; i < out.length; i++) out[i] = ((Long) l.get(i)).intValue();
        return out;
    }

    @Test
    public void chatPromptIdsEqualTheIdsTrainingAndTheRuntimeUsed() throws IOException {
        List<String> golden = Files.readAllLines(new File(bundle, "golden.jsonl").toPath(), StandardCharsets.UTF_8);
        int n = 0;
        for (String line : golden) {
            if (line.trim().isEmpty()) continue;
            Map<String, Object> row = (Map<String, Object>) Json.parse(line);
            int[] ids = chat.promptIds(messages(row));
            assertArrayEquals("golden row " + row.get("id"), ints(row.get("prompt_ids")), ids);
            n++;
        }
        for (Map<String, Object> c : cases()) assertArrayEquals((String) c.get("id"), ints(c.get("prompt_ids")), chat.promptIds(messages(c)));
        assertTrue(n > 0);
    }

    @Test
    public void greedyTokensEqualThePythonRuntimeOnTheSameFile() {
        for (Map<String, Object> c : cases()) {
            List<Integer> got = new ArrayList<>();
            engine.reset(); // as the Python side: from an empty KV cache
            engine.generate(chat.promptIds(messages(c)), 16, 0f, 0, (id, piece) -> got.add(id) || true);
            int[] g = got.stream().mapToInt(Integer::intValue).toArray();
            assertArrayEquals("row " + c.get("id"), ints(c.get("greedy_ids")), g);
        }
    }

    @Test
    public void aFollowUpTurnReusesTheEarlierTurnsAndARepeatIsIdentical() {
        List<String[]> msgs = messages(cases().get(0));
        engine.reset();
        ChatEngine.Answer first = chat.chat(msgs, 12, 0f, d -> true);
        assertEquals(0, engine.lastReusedTokens());
        ChatEngine.Answer again = chat.chat(msgs, 12, 0f, d -> true); // fully cached: last token recomputed
        assertEquals(first.text, again.text);
        assertEquals(first.promptTokens - 1, engine.lastReusedTokens());
        List<String[]> turn2 = new ArrayList<>(msgs);
        turn2.add(new String[] {"assistant", first.text});
        turn2.add(new String[] {"user", "Say it again in five words."});
        ChatEngine.Answer second = chat.chat(turn2, 12, 0f, d -> true);
        // Everything up to the end of the first prompt is reused (the answer's tokens too, as far as
        // re-tokenizing the rendered turn reproduces them).
        assertTrue(engine.lastReusedTokens() >= first.promptTokens);
        assertFalse(second.text.trim().isEmpty());
        assertEquals("length", first.stop);
        assertTrue(first.timer.ttftMs() > 0);
    }

    @Test
    public void tokenPiecesStreamBackToTheExactTextIncludingEmoji() {
        String text = "Café über 東京 🙂👍🏽 — ¿qué tal?";
        int[] ids = engine.tokenize(text, false, false);
        Utf8Stream s = new Utf8Stream();
        StringBuilder out = new StringBuilder();
        int splitPieces = 0;
        for (int id : ids) {
            byte[] p = engine.piece(id);
            if (new String(p, StandardCharsets.UTF_8).contains("\uFFFD")) splitPieces++; // ends inside a character
            String d = s.push(p);
            assertFalse(d.contains("\uFFFD"));
            out.append(d);
        }
        out.append(s.flush());
        assertEquals(text, out.toString());
        assertTrue("expected some tokens that end inside a character", splitPieces > 0);
    }

    @Test
    public void latencyRunsAreFixedLengthPastEndOfSequence() {
        int[] prompt = LatencyBench.syntheticPrompt(engine, 32, new java.util.Random(1));
        assertEquals(32, prompt.length);
        // A prompt that ends a turn makes the model want to stop at once; the fixed run goes on.
        int[] eosPrompt = chat.promptIds(messages(cases().get(0)));
        int[] n = {0};
        assertEquals(24, engine.generateFixed(eosPrompt, 24, (id, piece) -> ++n[0] > 0));
        assertEquals(24, n[0]);
        Map<String, dev.edgekto.core.LatencyStats> r = LatencyBench.run(engine, 1, 3, 32, 8, 0);
        assertEquals(3, r.get("e2e_s").n);
        assertTrue(r.get("ttft_s").min > 0);
        assertTrue(r.get("e2e_s").min >= r.get("ttft_s").min);
        assertTrue(r.get("tpot_s").p50 > 0);
        assertTrue(LatencyBench.table(r).contains("ttft"));
    }

    @Test
    public void stoppingFromTheListenerStopsGeneration() {
        int[] seen = {0};
        int n = engine.generate(chat.promptIds(messages(cases().get(0))), 40, 0f, 0, (id, piece) -> ++seen[0] < 3);
        assertEquals(3, n);
        assertEquals(3, seen[0]);
    }

    @Test
    public void badInputIsAReadableErrorNotACrash() throws IOException {
        File notGguf = File.createTempFile("not-a-model", ".gguf");
        Files.write(notGguf.toPath(), "hello".getBytes(StandardCharsets.UTF_8));
        try (LlamaEngine e = new LlamaEngine(notGguf, 512, 1)) {
            fail("loaded a text file as a model: " + e.path);
        } catch (IOException ex) {
            assertTrue(ex.getMessage(), ex.getMessage().contains(notGguf.getPath()));
        } finally {
            notGguf.delete();
        }
        int[] tooLong = new int[600];
        java.util.Arrays.fill(tooLong, ints(cases().get(0).get("prompt_ids"))[1]);
        try {
            engine.generate(tooLong, 8, 0f, 0, (id, piece) -> true);
            fail("a 600-token prompt in a 512-token context was accepted");
        } catch (IllegalArgumentException ex) {
            assertTrue(ex.getMessage(), ex.getMessage().contains("does not fit the context of 512"));
        }
        // The engine is still usable after the refusal.
        assertEquals(2, engine.generate(chat.promptIds(messages(cases().get(0))), 2, 0f, 0, (id, piece) -> true));
    }
}
