exports.up = async (knex) => {
  await knex.schema.createTable('behavior_patterns', (t) => {
    t.uuid('id').notNullable().defaultTo(knex.raw('gen_random_uuid()')).primary();
    t.uuid('customer_id').notNullable();
    t.uuid('organization_id').notNullable();
    t.string('pattern_type', 100).notNullable();
    t.decimal('confidence', 5, 4).notNullable();
    t.integer('frequency').notNullable();
    t.text('description');
    t.jsonb('metadata');
    t.timestamp('detected_at', { useTz: true }).notNullable();
    t.timestamp('valid_until', { useTz: true });
    t.timestamp('created_at', { useTz: true }).notNullable().defaultTo(knex.raw('now()'));
    t.foreign('customer_id', 'behavior_patterns_customer_id_fkey').references('id').inTable('customers')
      .onDelete('CASCADE');
    t.foreign('organization_id', 'behavior_patterns_organization_id_fkey').references('id').inTable('organizations')
      .onDelete('RESTRICT');
    t.check('confidence >= 0 AND confidence <= 1', [], 'behavior_patterns_confidence_range_check');
    t.check('frequency > 0', [], 'behavior_patterns_frequency_positive_check');
    t.check('valid_until > detected_at', [], 'behavior_patterns_valid_until_after_detected_at_check');
    t.index(['customer_id'], 'behavior_patterns_customer_id_idx');
    t.index(['organization_id'], 'behavior_patterns_organization_id_idx');
    t.index(['pattern_type'], 'behavior_patterns_pattern_type_idx');
  });
  await knex.raw('CREATE INDEX behavior_patterns_detected_at_idx ON behavior_patterns (detected_at DESC)');
};

exports.down = (knex) => knex.schema.dropTable('behavior_patterns');
