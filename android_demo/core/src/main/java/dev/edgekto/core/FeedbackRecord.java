package dev.edgekto.core;

import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A thumbs-up/down on one answer, in the row format {@code edge-runtime feedback export} writes and
 * {@code edge-kto train} reads (unpaired KTO): {"id", "prompt": [messages], "completion", "label",
 * "source": "device", "note"?, "model"?, "bundle"?}. Shared fixture: tests/fixtures/feedback_rows.jsonl.
 */
public final class FeedbackRecord {
    public final String id;
    public final List<String[]> messages; // {role, content}
    public final String completion;
    public final boolean good;
    public final String note;
    public final String model;
    public final String bundle; // sha256 of the manifest of the bundle that answered, or null

    public FeedbackRecord(String id, List<String[]> messages, String completion, boolean good, String note, String model) {
        this(id, messages, completion, good, note, model, null);
    }

    public FeedbackRecord(String id, List<String[]> messages, String completion, boolean good, String note, String model,
            String bundle) {
        if (completion == null || completion.trim().isEmpty())
            throw new IllegalArgumentException("a blank completion carries nothing to learn from");
        this.id = id;
        this.messages = messages;
        this.completion = completion;
        this.good = good;
        this.note = note;
        this.model = model;
        this.bundle = bundle;
    }

    public String toJsonLine() {
        Map<String, Object> row = new LinkedHashMap<>();
        row.put("id", id);
        row.put("prompt", ChatMl.messagesToJson(messages));
        row.put("completion", completion);
        row.put("label", good);
        row.put("source", "device");
        if (note != null) row.put("note", note);
        if (model != null) row.put("model", model);
        if (bundle != null) row.put("bundle", bundle);
        return Json.write(row);
    }

    @SuppressWarnings("unchecked")
    public static FeedbackRecord fromJsonLine(String line) {
        Map<String, Object> row = (Map<String, Object>) Json.parse(line);
        if (!(row.get("label") instanceof Boolean)) throw new IllegalArgumentException("field 'label': must be a JSON boolean");
        return new FeedbackRecord((String) row.get("id"), ChatMl.messagesFromJson(row.get("prompt")), (String) row.get("completion"), (Boolean) row.get("label"),
                (String) row.get("note"), (String) row.get("model"), (String) row.get("bundle"));
    }
}
