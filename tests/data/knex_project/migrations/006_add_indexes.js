exports.up = async (knex) => {
  await knex.raw("CREATE INDEX customer_interactions_sentiment_label_idx ON customer_interactions ((sentiment ->> 'label'))");
  await knex.raw('CREATE INDEX customer_interactions_metadata_idx ON customer_interactions USING gin (metadata)');
  await knex.raw("CREATE INDEX customer_interactions_content_fts_idx ON customer_interactions USING gin (to_tsvector('english', content))");
};

exports.down = async (knex) => {
  await knex.raw('DROP INDEX customer_interactions_content_fts_idx');
  await knex.raw('DROP INDEX customer_interactions_metadata_idx');
  await knex.raw('DROP INDEX customer_interactions_sentiment_label_idx');
};
