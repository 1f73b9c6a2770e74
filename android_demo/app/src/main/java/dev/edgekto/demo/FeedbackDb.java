package dev.edgekto.demo;

import android.content.ContentValues;
import android.content.Context;
import android.database.Cursor;
import android.database.sqlite.SQLiteDatabase;
import android.database.sqlite.SQLiteOpenHelper;
import dev.edgekto.core.ChatMl;
import dev.edgekto.core.FeedbackRecord;
import dev.edgekto.core.FeedbackSchema;
import dev.edgekto.core.Json;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.util.List;

/**
 * Thumbs on the phone, in the runtime's feedback schema (FeedbackSchema), exported as the KTO
 * JSONL rows `edge-runtime feedback export` writes and `edge-kto train` reads.
 */
final class FeedbackDb extends SQLiteOpenHelper {
    FeedbackDb(Context ctx) {
        super(ctx, "feedback.sqlite", null, 2); // 2: completions.bundle
        setWriteAheadLoggingEnabled(true);
    }

    @Override
    public void onConfigure(SQLiteDatabase db) {
        db.execSQL("PRAGMA synchronous=FULL"); // a rating survives the app being killed right after the tap
    }

    @Override
    public void onCreate(SQLiteDatabase db) {
        for (String sql : FeedbackSchema.STATEMENTS) db.execSQL(sql);
    }

    @Override
    public void onUpgrade(SQLiteDatabase db, int oldVersion, int newVersion) {
        if (oldVersion < 2) db.execSQL(FeedbackSchema.ADD_BUNDLE_COLUMN);
    }

    static double now() {
        return System.currentTimeMillis() / 1000.0;
    }

    /** {@code bundle}: the manifest sha256 of the bundle that answered (rows of an older model are told apart). */
    void logCompletion(String requestId, List<String[]> messages, String completion, String model, String bundle) {
        ContentValues v = new ContentValues();
        v.put("request_id", requestId);
        v.put("created", now());
        v.put("model", model);
        v.put("prompt", Json.write(ChatMl.messagesToJson(messages)));
        v.put("completion", completion);
        v.put("bundle", bundle);
        getWritableDatabase().insertWithOnConflict("completions", null, v, SQLiteDatabase.CONFLICT_REPLACE);
    }

    void rate(String requestId, boolean good) {
        ContentValues v = new ContentValues();
        v.put("request_id", requestId);
        v.put("good", good ? 1 : 0);
        v.put("created", now());
        getWritableDatabase().insertWithOnConflict("feedback", null, v, SQLiteDatabase.CONFLICT_REPLACE);
    }

    /** Rated rows as KTO JSONL; returns {written, skipped blank completions}. */
    int[] exportKto(OutputStream out) throws IOException {
        int written = 0, blank = 0;
        try (Cursor c = getReadableDatabase().rawQuery(FeedbackSchema.RATED_ROWS, null)) {
            while (c.moveToNext()) {
                List<String[]> msgs = ChatMl.messagesFromJson(Json.parse(c.getString(1)));
                String completion = c.getString(2);
                if (completion == null || completion.trim().isEmpty()) {
                    blank++;
                    continue;
                }
                FeedbackRecord r = new FeedbackRecord(c.getString(0), msgs, completion, c.getInt(3) == 1,
                        c.isNull(4) ? null : c.getString(4), c.isNull(5) ? null : c.getString(5),
                        c.isNull(6) ? null : c.getString(6));
                out.write((r.toJsonLine() + "\n").getBytes(StandardCharsets.UTF_8));
                written++;
            }
        }
        out.flush();
        return new int[] {written, blank};
    }
}
