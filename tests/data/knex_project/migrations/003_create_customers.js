exports.up = async (knex) => {
  await knex.schema.createTable('customers', (t) => {
    t.uuid('id').notNullable().defaultTo(knex.raw('gen_random_uuid()')).primary();
    t.uuid('organization_id').notNullable();
    t.string('external_id', 255).notNullable();
    t.string('email', 255);
    t.string('first_name', 100);
    t.string('last_name', 100);
    t.string('segment', 100);
    t.jsonb('metadata');
    t.timestamp('first_seen_at', { useTz: true }).notNullable();
    t.timestamp('last_seen_at', { useTz: true }).notNullable();
    t.integer('interaction_count');
    t.decimal('average_sentiment', 5, 4);
    t.timestamp('created_at', { useTz: true }).notNullable().defaultTo(knex.raw('now()'));
    t.timestamp('updated_at', { useTz: true }).notNullable().defaultTo(knex.raw('now()'));
    t.unique(['organization_id', 'external_id'], { indexName: 'customers_organization_id_external_id_key' });
    t.foreign('organization_id', 'customers_organization_id_fkey').references('id').inTable('organizations')
      .onDelete('RESTRICT');
    t.check('average_sentiment BETWEEN -1 AND 1', [], 'customers_average_sentiment_range_check');
    t.check('interaction_count >= 0', [], 'customers_interaction_count_nonnegative_check');
    t.index(['email'], 'customers_email_idx');
    t.index(['segment'], 'customers_segment_idx');
  });
  await knex.raw(`CREATE TRIGGER customers_set_updated_at BEFORE UPDATE ON customers
                  FOR EACH ROW EXECUTE FUNCTION set_updated_at()`);
};

exports.down = (knex) => knex.schema.dropTable('customers');
