exports.up = async (knex) => {
  await knex.raw(`
    CREATE FUNCTION set_updated_at() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
    BEGIN
        NEW.updated_at := now();
        RETURN NEW;
    END
    $$`);
  await knex.schema.createTable('organizations', (t) => {
    t.uuid('id').notNullable().defaultTo(knex.raw('gen_random_uuid()')).primary();
    t.string('name', 255).notNullable();
    t.timestamp('created_at', { useTz: true }).notNullable().defaultTo(knex.raw('now()'));
    t.timestamp('updated_at', { useTz: true }).notNullable().defaultTo(knex.raw('now()'));
  });
  await knex.raw(`CREATE TRIGGER organizations_set_updated_at BEFORE UPDATE ON organizations
                  FOR EACH ROW EXECUTE FUNCTION set_updated_at()`);
};

exports.down = async (knex) => {
  await knex.schema.dropTable('organizations');
  await knex.raw('DROP FUNCTION set_updated_at()');
};
