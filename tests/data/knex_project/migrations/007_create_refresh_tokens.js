exports.up = (knex) => knex.schema.createTable('refresh_tokens', (t) => {
  t.uuid('id').notNullable().defaultTo(knex.raw('gen_random_uuid()')).primary();
  t.uuid('user_id').notNullable();
  t.text('token').notNullable();
  t.timestamp('expires_at', { useTz: true }).notNullable();
  t.timestamp('created_at', { useTz: true }).notNullable().defaultTo(knex.raw('now()'));
  t.foreign('user_id', 'refresh_tokens_user_id_fkey').references('id').inTable('users').onDelete('CASCADE');
  t.check('expires_at > created_at', [], 'refresh_tokens_expires_after_created_check');
  t.check("expires_at <= created_at + interval '168 hours'", [], 'refresh_tokens_lifetime_max_7_days_check');
  t.index(['user_id'], 'refresh_tokens_user_id_idx');
  t.index(['token'], 'refresh_tokens_token_idx');
  t.index(['expires_at', 'id'], 'refresh_tokens_expires_at_id_idx');
});

exports.down = (knex) => knex.schema.dropTable('refresh_tokens');
