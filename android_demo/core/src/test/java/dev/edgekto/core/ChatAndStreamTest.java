package dev.edgekto.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.List;
import java.util.Map;
import java.util.Random;
import org.junit.Test;

/** ChatMl against the runtime's Jinja rendering (shared fixture), Utf8Stream, GenerationTimer. */
public class ChatAndStreamTest {
    @SuppressWarnings("unchecked")
    @Test
    public void chatMlRendersLikeTheRuntimeForEverySharedCase() throws IOException {
        File f = new File(CoreTest.FIXTURES, "chat_render.json");
        Map<String, Object> doc = (Map<String, Object>) Json.parse(new String(Files.readAllBytes(f.toPath()), StandardCharsets.UTF_8));
        Map<String, Object> templates = (Map<String, Object>) doc.get("templates");
        List<Object> cases = (List<Object>) doc.get("cases");
        assertEquals(8, cases.size());
        for (Object o : cases) {
            Map<String, Object> c = (Map<String, Object>) o;
            List<String[]> msgs = ChatMl.messagesFromJson(c.get("messages"));
            ChatMl chat = ChatMl.fromTemplate((String) templates.get(c.get("template")));
            assertEquals(c.get("template") + "/" + c.get("conversation"), c.get("text"), chat.render(msgs, true));
        }
    }

    @Test
    public void aTemplateOutsideTheChatMlFamilyIsRefusedWithAReason() {
        try {
            ChatMl.fromTemplate("{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}");
            fail("a Mistral-style template was accepted");
        } catch (IllegalArgumentException e) {
            assertTrue(e.getMessage(), e.getMessage().contains("not ChatML"));
        }
    }

    @Test
    public void utf8StreamNeverShowsHalfACharacterWhereverThePiecesAreCut() {
        String text = "Café über 東京 🙂👍🏽 — ¿qué tal? ok";
        byte[] all = text.getBytes(StandardCharsets.UTF_8);
        Random rnd = new Random(7);
        for (int trial = 0; trial < 500; trial++) {
            Utf8Stream s = new Utf8Stream();
            StringBuilder out = new StringBuilder();
            int i = 0;
            while (i < all.length) {
                int n = 1 + rnd.nextInt(4);
                int end = Math.min(all.length, i + n);
                byte[] piece = java.util.Arrays.copyOfRange(all, i, end);
                String delta = s.push(piece);
                assertFalse("replacement char after cut at " + end, delta.contains("\uFFFD"));
                out.append(delta);
                i = end;
            }
            out.append(s.flush());
            assertEquals(text, out.toString());
        }
        // A 4-byte emoji cut after each of its first three bytes comes out only when complete.
        byte[] emoji = "🙂".getBytes(StandardCharsets.UTF_8);
        Utf8Stream s = new Utf8Stream();
        for (int k = 0; k < 3; k++) assertEquals("", s.push(new byte[] {emoji[k]}));
        assertEquals("🙂", s.push(new byte[] {emoji[3]}));
    }

    @Test
    public void timerUsesTheBenchDefinitions() {
        GenerationTimer t = new GenerationTimer(1_000_000_000L);
        assertTrue(Double.isNaN(t.ttftMs()));
        t.onToken(1_250_000_000L); // first token 250 ms after the start
        for (int k = 1; k <= 10; k++) t.onToken(1_250_000_000L + k * 50_000_000L); // then 20 tok/s
        assertEquals(250.0, t.ttftMs(), 1e-9);
        assertEquals(20.0, t.decodeTokensPerSecond(), 1e-9);
        assertEquals(11, t.tokens());
        assertEquals("TTFT 250 ms · 20.0 tok/s · 11 tokens", t.overlay());
    }
}
