exports.up = async (knex) => {
  await knex.raw(`
    CREATE FUNCTION customer_interactions_reject_future_timestamp() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
    BEGIN
        IF NEW."timestamp" > clock_timestamp() THEN
            RAISE EXCEPTION 'customer_interactions."timestamp" % is in the future (now %)',
                NEW."timestamp", clock_timestamp()
                USING ERRCODE = 'check_violation',
                      CONSTRAINT = 'customer_interactions_timestamp_not_future',
                      TABLE = 'customer_interactions',
                      COLUMN = 'timestamp';
        END IF;
        RETURN NEW;
    END
    $$`);
  await knex.schema.createTable('customer_interactions', (t) => {
    t.uuid('id').notNullable().defaultTo(knex.raw('gen_random_uuid()')).primary();
    t.uuid('customer_id').notNullable();
    t.uuid('organization_id').notNullable();
    t.timestamp('timestamp', { useTz: true }).notNullable();
    t.string('channel', 50).notNullable();
    t.string('event_type', 100).notNullable();
    t.text('content');
    t.jsonb('sentiment');
    t.decimal('sentiment_confidence', 5, 4);
    t.jsonb('metadata');
    t.timestamp('processed_at', { useTz: true });
    t.timestamp('created_at', { useTz: true }).notNullable().defaultTo(knex.raw('now()'));
    t.foreign('customer_id', 'customer_interactions_customer_id_fkey').references('id').inTable('customers')
      .onDelete('CASCADE');
    t.foreign('organization_id', 'customer_interactions_organization_id_fkey').references('id')
      .inTable('organizations').onDelete('RESTRICT');
    t.check("channel IN ('web', 'mobile', 'email', 'chat', 'phone')", [], 'customer_interactions_channel_check');
    t.check('sentiment_confidence BETWEEN 0 AND 1', [], 'customer_interactions_sentiment_confidence_range_check');
    t.index(['customer_id'], 'customer_interactions_customer_id_idx');
    t.index(['organization_id'], 'customer_interactions_organization_id_idx');
    t.index(['channel'], 'customer_interactions_channel_idx');
  });
  await knex.raw('CREATE INDEX customer_interactions_timestamp_idx ON customer_interactions ("timestamp" DESC)');
  await knex.raw(`CREATE TRIGGER customer_interactions_timestamp_not_future
                  BEFORE INSERT OR UPDATE OF "timestamp" ON customer_interactions
                  FOR EACH ROW WHEN (NEW."timestamp" > clock_timestamp())
                  EXECUTE FUNCTION customer_interactions_reject_future_timestamp()`);
};

exports.down = async (knex) => {
  await knex.schema.dropTable('customer_interactions');
  await knex.raw('DROP FUNCTION customer_interactions_reject_future_timestamp()');
};
